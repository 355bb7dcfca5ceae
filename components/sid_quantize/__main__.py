"""``python -m components.sid_quantize --config PROFILE --items URI [--set k=v] [--out DIR]``"""

from components.common.stage import stage_main
from components.sid_quantize import STAGE

stage_main(STAGE)
