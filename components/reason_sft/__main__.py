"""``python -m components.reason_sft --config PROFILE --sft-model URI --reasoning URI --sid-map URI [--samples URI]``"""

from components.common.stage import stage_main
from components.reason_sft import STAGE

stage_main(STAGE)
