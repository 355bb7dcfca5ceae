"""``python -m components.align_sft --config PROFILE --items URI --samples URI --sid-map URI --corpus URI``"""

from components.align_sft import STAGE
from components.common.stage import stage_main

stage_main(STAGE)
