"""Stage ``promote``: register the run's model and move the production alias, only if it is better.

Compares the run's score (``retrain.metric`` @ ``retrain.k``, ``retrain.mode``,
``retrain.split``, from evaluate's ``metrics``) with the production model's. When evaluate scored
the production model on the same rows (model ``production`` in the metrics: a scheduled run that
keeps the production SIDs), those two scores are compared; otherwise the score recorded on the
production version when it was promoted, measured on its own run's rows (a changed catalog moves
the test split), and the decision says so. A better model (by more than
``retrain.min_improvement``) or the first one is registered as a new version of
``retrain.registered_model``, tagged with what a later run needs (model, sid_map and codebooks
URIs, score, run), and gets the alias. Otherwise nothing is registered and the reason is
recorded: in the ``decision`` artifact, the stage's stats and the pipeline run's
``sidreasoner.promotion`` tag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from components.common import artifacts, registry, serving, storage
from components.common.lineage import StageRun, link_model_metrics
from components.common.registry import PRODUCTION_MODEL, PreviousModel, RetrainConfig
from components.common.stage import StageContext

log = logging.getLogger(__name__)


class PromotionError(ValueError):
    """The inputs cannot decide a promotion (the configured score is not in the metrics)."""


def score(metrics: pd.DataFrame, cfg: RetrainConfig, uri: str, model: str) -> float | None:
    """``model``'s value of the configured metric; None when the metrics do not hold it."""
    row = metrics[(metrics["model"] == model) & (metrics["mode"] == cfg.mode)
                  & (metrics["split"] == cfg.split) & (metrics["k"] == cfg.k)]
    if len(row) > 1:
        raise PromotionError(f"{uri}: {len(row)} rows for model {model!r}, mode {cfg.mode}, split {cfg.split}, "
                             f"k {cfg.k}")
    return float(row[cfg.metric].iloc[0]) if len(row) else None


def run_score(metrics: pd.DataFrame, cfg: RetrainConfig, uri: str) -> float:
    """The run's value of the configured metric (the model under test must have one)."""
    value = score(metrics, cfg, uri, cfg.model_name)
    if value is None:
        raise PromotionError(f"{uri}: no row for model {cfg.model_name!r}, mode {cfg.mode}, split "
                             f"{cfg.split}, k {cfg.k} (retrain.*); the metrics hold models "
                             f"{sorted(set(metrics['model']))}, modes {sorted(set(metrics['mode']))}, "
                             f"splits {sorted(set(metrics['split']))}, k {sorted(set(metrics['k']))}")
    return value


def decide(cfg: RetrainConfig, value: float, previous: PreviousModel,
           production_value: float | None = None) -> tuple[bool, str]:
    """(promote?, why) for a run scoring ``value`` against the production model, which scored
    ``production_value`` on the same rows when evaluate decoded it (else its recorded score counts)."""
    if not previous.found:
        return True, f"first model of {cfg.registered_model}: {cfg.metric_name} = {value:.4f}"
    if production_value is not None:
        baseline, basis = production_value, "on this run's rows"
    elif previous.metric != cfg.metric_name or previous.metric_value is None:
        return False, (f"production version {previous.version} was scored on {previous.metric!r}, this run on "
                       f"{cfg.metric_name!r}: not comparable, production kept (move the alias by hand to "
                       "change the metric)")
    else:
        baseline, basis = previous.metric_value, "as recorded on its own run's rows"
    margin = value - baseline
    production = f"production version {previous.version} ({baseline:.4f} {basis})"
    if margin > cfg.min_improvement:
        return True, f"{cfg.metric_name} {value:.4f} beats {production} by {margin:+.4f}"
    return False, (f"{cfg.metric_name} {value:.4f} does not beat {production} by more than "
                   f"{cfg.min_improvement} ({margin:+.4f}): production kept")


def package(cfg: RetrainConfig, ctx: StageContext, inputs: Mapping[str, str], model_id: str) -> dict[str, Any]:
    """Log the servable pyfunc into the LoggedModel ``model_id`` and check that it answers; returns
    what the decision records about it."""
    catalog = serving.ServedCatalog.from_catalog(artifacts.read_catalog(inputs["sid_map"], inputs["items"]))
    samples = artifacts.read_samples(inputs["samples"])
    settings = cfg.serving
    if settings.max_history is None:
        settings = settings.model_copy(update={"max_history": serving.trained_history_length(samples)})
    example = serving.current_histories(samples, settings.max_history)[0]  # the most recently active user
    metadata = {"run_key": ctx.run_key, "git_commit": ctx.git_commit, "model_digest": ctx.input_digests["model"],
                "sid_map_digest": ctx.input_digests["sid_map"], "items_digest": ctx.input_digests["items"]}
    with storage.local_copy(inputs["model"]) as model_dir:
        info = serving.log_servable(model_dir=model_dir, catalog=catalog, settings=settings, example=example,
                                    metadata=metadata, model_id=model_id)
    log.info("promotion: logged the servable pyfunc into LoggedModel %s (%d live items, %d SIDs)", model_id,
             catalog.live_items, len(catalog.sids))
    if cfg.check_served_model:
        answer = serving.check_servable(info.model_uri)
        log.info("promotion: the logged model answers its example (user %s): %s", example.user_id,
                 list(answer["item_ids"][0]))
    return {"logged_model_uri": info.model_uri, "live_items": catalog.live_items, "sids": len(catalog.sids),
            "settings": settings.model_dump(mode="json"), "checked": cfg.check_served_model}


def run(cfg: RetrainConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    previous = PreviousModel.read(inputs["previous"])
    metrics = storage.read_parquet(inputs["metrics"]).to_pandas()
    value = run_score(metrics, cfg, inputs["metrics"])
    production_value = score(metrics, cfg, inputs["metrics"], PRODUCTION_MODEL) if previous.found else None
    promoted, reason = decide(cfg, value, previous, production_value)
    decision: dict[str, Any] = {
        "promoted": promoted, "reason": reason, "metric": cfg.metric_name, "value": value,
        "production_before": {"version": previous.version, "recorded_value": previous.metric_value,
                              "value_on_these_rows": production_value} if previous.found else None,
        "registered_model": cfg.registered_model, "alias": cfg.alias, "version": None,
        "model_uri": None, "model_digest": ctx.input_digests["model"], "model_id": None, "served": None,
    }
    if promoted:
        model_id = storage.read_json(inputs["model_stats"])["mlflow_model_id"]
        decision["model_id"], decision["served"] = model_id, package(cfg, ctx, inputs, model_id)
        # the deciding score, as a metric of the model measured on this run's samples (no "@" in MLflow keys)
        key = f"{cfg.mode}.{cfg.split}.{cfg.metric}_at_{cfg.k}"
        link_model_metrics(tracker.run_id, model_id, {key: value}, {key: ("samples", ctx.input_digests["samples"])})
        decision["version"] = registry.register(cfg, logged_model_id=model_id, tags={
            registry.TAG_MODEL_URI: ctx.uri_of("model", inputs["model"]),
            registry.TAG_SID_MAP_URI: ctx.uri_of("sid_map", inputs["sid_map"]),
            registry.TAG_CODEBOOKS_URI: ctx.uri_of("codebooks", inputs["codebooks"]),
            registry.TAG_METRIC: cfg.metric_name,
            registry.TAG_METRIC_VALUE: repr(value),
            registry.TAG_RUN_KEY: ctx.run_key,
        })
        decision["model_uri"] = f"models:/{cfg.registered_model}/{decision['version']}"
    log.info("promotion: %s", reason)
    digest = storage.write_json(outputs["decision"], decision)
    tracker.log_metrics({"promoted": int(promoted), "score": value,
                         **({"production_score": production_value} if production_value is not None else {})})
    tracker.log_dict(decision, "promotion.json")
    tracker.set_parent_tags({registry.TAG_PROMOTION: ("promoted: " if promoted else "not promoted: ") + reason})
    return {"decision": {"digest": digest, "promoted": promoted, "version": decision["version"] or ""}}
