"""``python -m components.grpo --config PROFILE --reasoning-model URI --reasoning URI --sid-map URI [--samples URI]``"""

from components.common.stage import stage_main
from components.grpo import STAGE

stage_main(STAGE)
