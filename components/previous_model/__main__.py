"""``python -m components.previous_model --config PROFILE [--set k=v] [--out DIR]``"""

from components.common.stage import stage_main
from components.previous_model import STAGE

stage_main(STAGE)
