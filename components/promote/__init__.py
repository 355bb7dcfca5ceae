"""Scheduled retraining, last step: register the new model, packaged as the servable MLflow pyfunc,
only if it beats production."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.registry import RetrainConfig
from components.common.stage import Input, Stage

STAGE = Stage(
    name="promote",
    section="retrain",
    config=RetrainConfig,
    run="components.promote.stage:run",
    description="Register the run's model (packaged as the servable MLflow pyfunc) and move the production "
                "alias if it beats production; otherwise record why not.",
    inputs={"metrics": Input(artifacts.METRICS, "evaluate.metrics", "the scores deciding promotion"),
            "model": Input(artifacts.MODEL, "grpo.model", "the trained model"),
            "model_stats": Input(artifacts.STATS, "grpo.stats", "its training stats (the MLflow LoggedModel id)"),
            "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the sid_map it was trained with"),
            "codebooks": Input(artifacts.CODEBOOKS, "sid_quantize.codebooks", "the codebooks of that sid_map"),
            "items": Input(artifacts.ITEMS, "ingest.items", "the titles the served model returns"),
            "samples": Input(artifacts.SAMPLES, "ingest.samples",
                             "the histories the model learnt from (their length, the serving example)"),
            "previous": Input(artifacts.PREVIOUS, "previous_model.previous", "the production model")},
    outputs={"decision": artifacts.DECISION},
    # It packages the model and answers the model's input example with the serving runtime (the
    # shared decoders, whose vLLM engine is in the CUDA lock only) before registering it: the
    # CUDA image flavour, run on a CPU node with enough memory for the model.
    image="cuda",
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
    enabled=lambda cfg: cfg.retrain.enabled,
)
