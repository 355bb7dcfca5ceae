"""``python -m components.recommend --config PROFILE --decision URI --model DIR --sid-map URI --items URI
--samples URI [--out DIR]``"""

from components.common.stage import stage_main
from components.recommend import STAGE

stage_main(STAGE)
