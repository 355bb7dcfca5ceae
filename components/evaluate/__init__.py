"""Evaluation stage: trie-constrained beam search (direct and thinking modes), item-level
HR/NDCG@K beside the baselines' rankings and (``evaluate.ablation``) the earlier stages' models,
paired bootstrap comparisons, predictions and an HTML report."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.evaluate.config import EvaluateConfig

STAGE = Stage(
    name="evaluate",
    config=EvaluateConfig,
    run="components.evaluate.stage:run",
    description="Score a model with trie-constrained beam search (direct and thinking modes) over the full "
                "catalog, beside the baselines and the earlier stages' models (ablation), with paired bootstrap "
                "intervals of the differences; write metrics, predictions, an HTML report and stats.",
    inputs={
        "model": Input(artifacts.MODEL, "grpo.model", "the model under test"),
        "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the catalog"),
        "items": Input(artifacts.ITEMS, "ingest.items", "item titles"),
        "samples": Input(artifacts.SAMPLES, "ingest.samples", "the rows to score"),
        "rankings": Input(artifacts.RANKINGS, "baselines.rankings", "the baselines' rankings of the same rows",
                          when=lambda cfg: bool(cfg.baselines.models)),
        # The paper's ablation: each earlier stage's model on the same rows, in the mode it was trained for.
        "align_model": Input(artifacts.MODEL, "align_sft.model", "ablation: the aligned model (direct mode)",
                             when=lambda cfg: cfg.evaluate.ablation),
        "reason_model": Input(artifacts.MODEL, "reason_sft.model",
                              "ablation: the reasoning-activated model (thinking mode)",
                              when=lambda cfg: cfg.evaluate.ablation),
        "grpo_stats": Input(artifacts.STATS, "grpo.stats", "ablation: GRPO's reward and reasoning length per step",
                            when=lambda cfg: cfg.evaluate.ablation),
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
