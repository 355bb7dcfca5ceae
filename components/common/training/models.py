"""The trained model, stage side: its digest, the stage's stats artifact, and the MLflow
LoggedModel that links the model to its run, metrics and inputs.

The LoggedModel is an output of the stage's run, and its metrics are linked to the datasets the
stage trained on (its ``corpus`` or ``reasoning`` input; validation losses to the ``samples`` it
validated on, when it has them), so MLflow's own UI walks model -> run -> datasets. It holds no
weights by default (external: it points at the model artifact); ``promote`` logs the servable
pyfunc into the LoggedModel of the model it registers (:mod:`components.common.serving`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.training.engine import numeric_logs
from components.common.training.settings import TrainerSettings

log = logging.getLogger(__name__)

#: What a logged model needs to be served (the weights need our package only for SID decoding).
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers==5.17.0", "accelerate==1.15.0"]
#: Input kinds a training stage learns from, and the one it validates on (when it has one).
TRAINING_KINDS = ("corpus", "reasoning")
VALIDATION_KIND = "samples"


def metric_datasets(stage: str, lineage: Mapping[str, str], metrics: Mapping[str, float]) -> dict[str, tuple[str, str]]:
    """Metric key -> (input name, digest) of the dataset it was measured on: validation metrics
    (``eval`` in the key) on the stage's ``samples`` input when it has one, every other metric on
    its training data (the stage declaration's inputs of :data:`TRAINING_KINDS`)."""
    declaration = importlib.import_module(f"components.{stage}").STAGE
    kinds = {name: spec.kind.name for name, spec in declaration.inputs.items() if name in lineage}
    training = next((name for name, kind in kinds.items() if kind in TRAINING_KINDS), None)
    validation = next((name for name, kind in kinds.items() if kind == VALIDATION_KIND), training)
    linked = {}
    for key in metrics:
        name = validation if "eval" in key else training
        if name is not None:
            linked[key] = (name, lineage[name])
    return linked


def log_model(*, run_id: str, name: str, model_dir: Path | None, model_uri: str, model_digest: str,
              lineage: Mapping[str, str], params: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    """Record the trained model in MLflow as a LoggedModel of the stage's run; returns its id.

    ``lineage`` maps input names (corpus, sid_map, base model ...) to content digests; they go
    into the model's tags next to the output URI and digest. With a local ``model_dir`` the
    weights are copied into MLflow (transformers flavor); otherwise the LoggedModel is external,
    pointing at ``model_uri``.
    """
    from components.common.lineage import _mlflow, link_model_metrics

    mlflow = _mlflow()
    tags = {"sidreasoner.model_uri": model_uri, "sidreasoner.digest": model_digest,
            **{f"sidreasoner.lineage.{k}": v for k, v in lineage.items()}}
    flat_params = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in params.items()}
    if model_dir is not None:
        info = mlflow.transformers.log_model(
            transformers_model=str(model_dir), name=name, task="text-generation", tags=tags,
            params=flat_params, model_type="causal-lm", pip_requirements=MODEL_REQUIREMENTS)
        model_id = info.model_id
    else:
        model_id = mlflow.create_external_model(name=name, source_run_id=run_id, tags=tags, params=flat_params,
                                                model_type="causal-lm").model_id
        # the run lists it under "Logged models" (log_model above records that itself)
        mlflow.MlflowClient().log_outputs(run_id, [mlflow.entities.LoggedModelOutput(model_id, step=0)])
    numeric = numeric_logs(metrics)
    link_model_metrics(run_id, model_id, numeric, metric_datasets(name, lineage, numeric))
    log.info("MLflow: logged model %s (%s) for %s", model_id, "weights" if model_dir else "external", model_uri)
    return model_id


def finish_stage(stage: str, cfg: TrainerSettings, tracker: Any, outputs: Mapping[str, str],
                 stats: dict[str, Any], lineage: Mapping[str, str], *, model_uri: str,
                 metrics: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Stats artifact, MLflow metrics (``metrics``, default: the numbers at the top level of
    ``stats``), and the model logged to MLflow with its lineage. ``outputs`` are where the stage
    writes (staged), ``model_uri`` where the model is published (``ctx.uri_of``); the model's
    digest is the one ``launch.run_training`` got when it wrote the folder."""
    model_digest = stats["model_digest"]
    summary = numeric_logs(metrics if metrics is not None else stats)
    with (storage.local_copy(outputs["model"]) if cfg.log_model_weights else contextlib.nullcontext()) as model_dir:
        stats["mlflow_model_id"] = log_model(
            run_id=tracker.run_id, name=stage, model_dir=model_dir, model_uri=model_uri,
            model_digest=model_digest, lineage=lineage, params={"stage": stage, "config": cfg.model_dump(mode="json")},
            metrics=summary)
    stats["lineage"] = dict(lineage)
    stats_digest = storage.write_json(outputs["stats"], stats)
    tracker.log_metrics(summary)
    tracker.log_dict(stats, f"{stage}_stats.json")
    return {"model": {"digest": model_digest, "global_step": stats["global_step"]},
            "stats": {"digest": stats_digest}}
