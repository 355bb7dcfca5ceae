"""Baselines: popularity, SASRec (MiniOneRec's) and SASRec-CE (full-catalog cross-entropy, tuned on
valid), trained on the train split and ranking the full catalog for every valid and test row, off
the GPU critical path (a CPU step beside training)."""

from components.baselines.config import BaselinesConfig
from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage

STAGE = Stage(
    name="baselines",
    config=BaselinesConfig,
    run="components.baselines.stage:run",
    description="Train the classic baselines (popularity, SASRec, SASRec-CE) on the train split and rank the full "
                "catalog for every valid and test row; evaluate scores them beside the model.",
    inputs={"samples": Input(artifacts.SAMPLES, "ingest.samples", "train split to learn from, rows to rank"),
            "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the catalog (non-retired items)")},
    outputs={"rankings": artifacts.RANKINGS, "stats": artifacts.STATS},
    resources=ResourceSpec(cpu_request="4", memory_request="8G"),
    enabled=lambda cfg: bool(cfg.baselines.models),
)
