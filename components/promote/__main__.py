"""``python -m components.promote --config PROFILE --metrics URI --model URI ... [--out DIR]``"""

from components.common.stage import stage_main
from components.promote import STAGE

stage_main(STAGE)
