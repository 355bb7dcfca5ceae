"""Batch recommendations: top-K items for every active user by the model the run just promoted."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.recommend.config import RecommendConfig
from components.recommend.tables import RECOMMENDATIONS

STAGE = Stage(
    name="recommend",
    config=RecommendConfig,
    run="components.recommend.stage:run",
    description="Top-K items for every active user (the run's samples, or a Parquet of active users) by the "
                "model the run just promoted, as Parquet with lineage to the model and catalog; none, saying "
                "why, when promotion was refused.",
    inputs={
        "decision": Input(artifacts.DECISION, "promote.decision", "whether (and as which version) the model was "
                                                                  "promoted"),
        "model": Input(artifacts.MODEL, "grpo.model", "the promoted model"),
        "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the catalog"),
        "items": Input(artifacts.ITEMS, "ingest.items", "item titles"),
        "samples": Input(artifacts.SAMPLES, "ingest.samples", "the users and their histories"),
    },
    outputs={"recommendations": RECOMMENDATIONS, "stats": artifacts.STATS},
    image="cuda",  # paper scale: sharded over GPUs like evaluate
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
    # by the model the run promotes: a run without retraining has none, and no recommend step
    enabled=lambda cfg: cfg.recommend.enabled and cfg.retrain.enabled,
)
