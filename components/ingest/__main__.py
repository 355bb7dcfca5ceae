"""``python -m components.ingest --config PROFILE [--set k=v] [--out DIR]``"""

from components.common.stage import stage_main
from components.ingest import STAGE

stage_main(STAGE)
