"""Scheduled retraining, last step: register the new model only if it beats production."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.registry import RetrainConfig
from components.common.stage import Input, Stage

STAGE = Stage(
    name="promote",
    section="retrain",
    config=RetrainConfig,
    run="components.promote.stage:run",
    description="Register the run's model and move the production alias if it beats production; "
                "otherwise record why not.",
    inputs={"metrics": Input(artifacts.METRICS, "evaluate.metrics", "the scores deciding promotion"),
            "model": Input(artifacts.MODEL, "grpo.model", "the trained model"),
            "model_stats": Input(artifacts.STATS, "grpo.stats", "its training stats (the MLflow LoggedModel id)"),
            "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the sid_map it was trained with"),
            "codebooks": Input(artifacts.CODEBOOKS, "sid_quantize.codebooks", "the codebooks of that sid_map"),
            "previous": Input(artifacts.PREVIOUS, "previous_model.previous", "the production model")},
    outputs={"decision": artifacts.DECISION},
    resources=ResourceSpec(cpu_request="500m", memory_request="1G"),  # registers a model version
    enabled=lambda cfg: cfg.retrain.enabled,
)
