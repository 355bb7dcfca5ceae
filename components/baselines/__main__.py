"""``python -m components.baselines --config PROFILE --samples URI --sid-map URI``"""

from components.baselines import STAGE
from components.common.stage import stage_main

stage_main(STAGE)
