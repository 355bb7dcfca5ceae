"""Scheduled retraining, step 1: find the production model of the previous runs in MLflow."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.registry import RetrainConfig
from components.common.stage import Stage

STAGE = Stage(
    name="previous_model",
    section="retrain",
    config=RetrainConfig,
    run="components.previous_model.stage:run",
    description="Find the production model (MLflow registered model alias) whose SIDs and weights this "
                "run continues from.",
    outputs={"previous": artifacts.PREVIOUS},
    resources=ResourceSpec(cpu_request="500m", memory_request="1G"),  # reads the MLflow registry
    enabled=lambda cfg: cfg.retrain.enabled,
)
