"""The trained model, stage side: its digest, the stage's stats artifact, and the MLflow
LoggedModel that links the model to its run, metrics and inputs."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.training.engine import numeric_logs
from components.common.training.settings import TrainerSettings

log = logging.getLogger(__name__)

#: What a logged model needs to be served (the weights need our package only for SID decoding).
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers==5.17.0", "accelerate==1.15.0"]


def log_model(*, run_id: str, name: str, model_dir: Path | None, model_uri: str, model_digest: str,
              lineage: Mapping[str, str], params: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    """Record the trained model in MLflow as a LoggedModel of the stage's run; returns its id.

    ``lineage`` maps input names (corpus, sid_map, base model ...) to content digests; they go
    into the model's tags next to the output URI and digest. With a local ``model_dir`` the
    weights are copied into MLflow (transformers flavor); otherwise the LoggedModel is external,
    pointing at ``model_uri``.
    """
    from components.common.lineage import _mlflow

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
    numeric = numeric_logs(metrics)
    if numeric:
        mlflow.MlflowClient().log_batch(run_id, metrics=[
            mlflow.entities.Metric(key=k, value=v, timestamp=int(time.time() * 1000), step=0, model_id=model_id)
            for k, v in numeric.items()])
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
