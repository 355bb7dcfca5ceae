"""``python -m components.teacher_corpus --config PROFILE --items URI --samples URI --sid-map URI
[--set k=v] [--out DIR]``"""

from components.common.stage import stage_main
from components.teacher_corpus import STAGE

stage_main(STAGE)
