"""Evaluation stage: trie-constrained beam search (direct and thinking modes), item-level
HR/NDCG@K beside the baselines' rankings, predictions and an HTML report."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.evaluate.config import EvaluateConfig

STAGE = Stage(
    name="evaluate",
    config=EvaluateConfig,
    run="components.evaluate.stage:run",
    description="Score a model with trie-constrained beam search (direct and thinking modes) over the full "
                "catalog, beside popularity and SASRec; write metrics, predictions, an HTML report and stats.",
    inputs={
        "model": Input(artifacts.MODEL, "grpo.model", "the model under test"),
        "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the catalog"),
        "items": Input(artifacts.ITEMS, "ingest.items", "item titles"),
        "samples": Input(artifacts.SAMPLES, "ingest.samples", "the rows to score"),
        "rankings": Input(artifacts.RANKINGS, "baselines.rankings", "the baselines' rankings of the same rows",
                          when=lambda cfg: bool(cfg.baselines.models)),
        # The production model is scored on this run's rows (it speaks this run's SIDs).
        "previous": Input(artifacts.PREVIOUS, "previous_model.previous",
                          "scheduled retraining: score the production model on the same rows",
                          when=lambda cfg: cfg.retrain.enabled and cfg.retrain.incremental_sids),
    },
    outputs={"metrics": artifacts.METRICS, "predictions": artifacts.PREDICTIONS, "report": artifacts.REPORT,
             "stats": artifacts.STATS},
    image="cuda",  # paper scale: 2 GPUs, the test set sharded
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
)
