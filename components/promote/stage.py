"""Stage ``promote``: register the run's model and move the production alias, only if it is better.

Compares the run's score (``retrain.metric`` @ ``retrain.k``, ``retrain.mode``,
``retrain.split``, from evaluate's ``metrics``) with the score recorded on the production
version (the ``previous`` artifact). A better model (by more than ``retrain.min_improvement``) or
the first one is registered as a new version of ``retrain.registered_model``, tagged with what a
later run needs (model, sid_map and codebooks URIs, score, run), and gets the alias. Otherwise
nothing is registered and the reason is recorded: in the ``decision`` artifact, the stage's
stats and the pipeline run's ``sidreasoner.promotion`` tag.

Scores are compared as recorded: the production score was measured on its own run's test split,
which a changed catalog moves; the decision says which values it compared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from components.common import registry, storage
from components.common.lineage import StageRun
from components.common.registry import PreviousModel, RetrainConfig
from components.common.stage import Stage, StageContext

log = logging.getLogger(__name__)


class PromotionError(ValueError):
    """The inputs cannot decide a promotion (the configured score is not in the metrics)."""


def score(metrics: pd.DataFrame, cfg: RetrainConfig, uri: str) -> float:
    """The run's value of the configured metric."""
    row = metrics[(metrics["model"] == cfg.model_name) & (metrics["mode"] == cfg.mode)
                  & (metrics["split"] == cfg.split) & (metrics["k"] == cfg.k)]
    if len(row) != 1:
        raise PromotionError(f"{uri}: no single row for model {cfg.model_name!r}, mode {cfg.mode}, split "
                             f"{cfg.split}, k {cfg.k} (retrain.*); the metrics hold models "
                             f"{sorted(set(metrics['model']))}, modes {sorted(set(metrics['mode']))}, "
                             f"splits {sorted(set(metrics['split']))}, k {sorted(set(metrics['k']))}")
    return float(row[cfg.metric].iloc[0])


def decide(cfg: RetrainConfig, value: float, previous: PreviousModel) -> tuple[bool, str]:
    """(promote?, why) for a run scoring ``value`` against the production model."""
    if not previous.found:
        return True, f"first model of {cfg.registered_model}: {cfg.metric_name} = {value:.4f}"
    if previous.metric != cfg.metric_name or previous.metric_value is None:
        return False, (f"production version {previous.version} was scored on {previous.metric!r}, this run on "
                       f"{cfg.metric_name!r}: not comparable, production kept (move the alias by hand to "
                       "change the metric)")
    margin = value - previous.metric_value
    if margin > cfg.min_improvement:
        return True, (f"{cfg.metric_name} {value:.4f} beats production version {previous.version} "
                      f"({previous.metric_value:.4f}) by {margin:+.4f}")
    return False, (f"{cfg.metric_name} {value:.4f} does not beat production version {previous.version} "
                   f"({previous.metric_value:.4f}) by more than {cfg.min_improvement} ({margin:+.4f}): "
                   "production kept")


def run(cfg: RetrainConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    previous = PreviousModel.read(inputs["previous"])
    value = score(storage.read_parquet(inputs["metrics"]).to_pandas(), cfg, inputs["metrics"])
    promoted, reason = decide(cfg, value, previous)
    decision: dict[str, Any] = {
        "promoted": promoted, "reason": reason, "metric": cfg.metric_name, "value": value,
        "production_before": {"version": previous.version, "value": previous.metric_value} if previous.found else None,
        "registered_model": cfg.registered_model, "alias": cfg.alias, "version": None,
    }
    if promoted:
        model_id = storage.read_json(inputs["model_stats"])["mlflow_model_id"]
        decision["version"] = registry.register(cfg, logged_model_id=model_id, tags={
            registry.TAG_MODEL_URI: ctx.uri_of("model", inputs["model"]),
            registry.TAG_SID_MAP_URI: ctx.uri_of("sid_map", inputs["sid_map"]),
            registry.TAG_CODEBOOKS_URI: ctx.uri_of("codebooks", inputs["codebooks"]),
            registry.TAG_METRIC: cfg.metric_name,
            registry.TAG_METRIC_VALUE: repr(value),
            registry.TAG_RUN_KEY: ctx.run_key,
        })
    log.info("promotion: %s", reason)
    digest = storage.write_json(outputs["decision"], decision)
    tracker.log_metrics({"promoted": int(promoted), "score": value})
    tracker.log_dict(decision, "promotion.json")
    tracker.set_parent_tags({registry.TAG_PROMOTION: ("promoted: " if promoted else "not promoted: ") + reason})
    return {"decision": {"digest": digest, "promoted": promoted, "version": decision["version"] or ""}}


STAGE = Stage(
    name="promote",
    section="retrain",
    config=RetrainConfig,
    run=run,
    description="Register the run's model and move the production alias if it beats production; "
                "otherwise record why not.",
    inputs={"metrics": "evaluate's metrics Parquet", "model": "the trained model folder (grpo)",
            "model_stats": "the training stage's stats JSON (its MLflow LoggedModel id)",
            "sid_map": "sid_map Parquet the model was trained with", "codebooks": "the codebooks folder",
            "previous": "previous_model's JSON"},
    outputs={"decision": "decision.json"},
)
