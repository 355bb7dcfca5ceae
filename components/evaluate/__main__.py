"""``python -m components.evaluate --config PROFILE --model DIR --sid-map URI --items URI --samples URI``"""

from components.common.stage import stage_main
from components.evaluate import STAGE

stage_main(STAGE)
