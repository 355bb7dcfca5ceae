"""MLflow lineage: one parent run per pipeline run, one nested run per stage.

The parent run is found by its ``sidreasoner.run_key`` tag (the KFP run id on a cluster, the
local run id for ``sidreasoner run``) and created by whichever process needs it first, so the
stages of one pipeline run meet in MLflow without sharing state. Each stage's nested run holds
its config section as params, its metrics and stats, and its input and output artifacts logged
with ``mlflow.log_input`` (source URI + content digest): matching an output digest of one stage
to an input digest of the next walks from a model back to the catalog snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from components.common import owner
from components.common.logs import redact

log = logging.getLogger(__name__)

TAG_RUN_KEY = "sidreasoner.run_key"
TAG_STAGE = "sidreasoner.stage"
TAG_CONFIG_HASH = "sidreasoner.config_hash"
TAG_PROFILE = "sidreasoner.profile"
TAG_IMAGES = "sidreasoner.images"
TAG_DIGEST = "sidreasoner.digest"
TAG_GIT = "mlflow.source.git.commit"
#: The experiment type MLflow 3's UI opens an experiment as: model training (runs, logged models,
#: metrics), not GenAI development (traces, judges), which it would infer from an untagged one.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Where a stage run's process runs (a later attempt closes the run if that process is gone).
TAG_HOST = "sidreasoner.host"
TAG_PID = "sidreasoner.pid"


def _mlflow():
    # mlflow imports litellm (genai scorers); without a local cost map it fetches one from the
    # network and can deadlock offline (STACK.md section 5).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import mlflow

    return mlflow


def configure(tracking_uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` and return the experiment id (created if needed)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_location,
                                              tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:  # created concurrently by another stage
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:  # created before the tag existed
            client.set_experiment_tag(exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def parent_runs(experiment_id: str, run_key: str) -> list:
    """The live parent runs of a pipeline run, the canonical one first (oldest, then smallest id).

    Several exist only briefly, when stages of one run start at the same time and each creates
    one (:func:`ensure_parent_run` then converges on the first)."""
    mlflow = _mlflow()
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{run_key}'", max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return sorted(parents, key=lambda r: (r.info.start_time, r.info.run_id))


def find_parent_run(experiment_id: str, run_key: str):
    parents = parent_runs(experiment_id, run_key)
    return parents[0] if parents else None


def ensure_parent_run(experiment_id: str, run_key: str, tags: Mapping[str, str], run_name: str) -> str:
    """Id of the pipeline run's parent MLflow run, created with ``tags`` if it does not exist.

    Nothing creates the parent before the stages on a cluster, and a DAG can have several root
    tasks (previous_model and ingest) that start together: each may find none and create one. A
    creator therefore looks again after creating, and when several exist all converge on the
    canonical one (:func:`parent_runs`); a creator whose run lost deletes it. A stage that attached
    to a parent which later turns out not to be canonical moves its run when it ends
    (:func:`stage_run`)."""
    existing = find_parent_run(experiment_id, run_key)
    if existing is not None:
        return existing.info.run_id
    client = _mlflow().MlflowClient()
    created = client.create_run(experiment_id, run_name=run_name, tags={TAG_RUN_KEY: run_key, **tags}).info.run_id
    canonical = parent_runs(experiment_id, run_key)[0].info.run_id
    if canonical != created:
        client.delete_run(created)
        log.info("MLflow parent run of pipeline run %s was created concurrently: using %s", run_key, canonical)
    else:
        log.info("created MLflow parent run %s for pipeline run %s", created, run_key)
    return canonical


def reattach(run_id: str, experiment_id: str, run_key: str, parent_id: str) -> str:
    """Move ``run_id`` under the canonical parent if ``parent_id`` is no longer it (a concurrent
    creation resolved the other way); returns the parent it is under. An emptied parent that lost
    is deleted."""
    canonical = find_parent_run(experiment_id, run_key)
    if canonical is None or canonical.info.run_id == parent_id:
        return parent_id
    client = _mlflow().MlflowClient()
    client.set_tag(run_id, "mlflow.parentRunId", canonical.info.run_id)
    left = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=1)
    if not left:
        client.delete_run(parent_id)
    log.info("MLflow: stage run %s moved under the canonical parent %s", run_id, canonical.info.run_id)
    return canonical.info.run_id


def end_parent_run(run_id: str, status: str = "FINISHED") -> None:
    _mlflow().MlflowClient().set_terminated(run_id, status=status)


def log_artifact_to(run_id: str, path: str | Path) -> None:
    """Attach a file to a run that is not the active one (e.g. the parent run)."""
    _mlflow().MlflowClient().log_artifact(run_id, str(path))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> {"a.b.0": value} (for params and metrics)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (Mapping, list, tuple)) for v in obj):
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = obj
    return out


def link_model_metrics(run_id: str, model_id: str, metrics: Mapping[str, float],
                       datasets: Mapping[str, tuple[str, str] | None]) -> None:
    """Log ``metrics`` of the LoggedModel ``model_id`` from ``run_id``, each linked to the run's
    input dataset ``datasets[key]`` ((name, full digest), as ``StageRun.log_dataset`` logged it;
    None: no dataset): MLflow's UI then lists them as the model's metrics and those datasets as
    the ones it used."""
    mlflow = _mlflow()
    now = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        name, digest = datasets.get(key) or (None, None)
        batch.append(mlflow.entities.Metric(key=key, value=float(value), timestamp=now, step=0, model_id=model_id,
                                            dataset_name=name, dataset_digest=digest and _short_digest(digest)))
    for i in range(0, len(batch), 1000):
        mlflow.MlflowClient().log_batch(run_id, metrics=batch[i:i + 1000])


def _short_digest(digest: str) -> str:
    # MLflow stores at most 36 characters of a dataset digest; the full one goes in a tag.
    return digest.split(":", 1)[-1][:32]


class StageRun:
    """The active stage's nested MLflow run."""

    def __init__(self, run_id: str, stage: str):
        self.run_id, self.stage = run_id, stage

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow = _mlflow()
        flat = {k: redact(json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            _mlflow().log_metrics(numeric, step=step)

    def log_dataset(self, name: str, uri: str, digest: str, context: str,
                    extra: Mapping[str, Any] | None = None) -> None:
        """Record an input (``context="input"``) or output artifact of this stage."""
        mlflow = _mlflow()
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # mlflow registers the local source class twice
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(uri))
        dataset = MetaDataset(source=source, name=name, digest=_short_digest(digest))
        tags = {TAG_DIGEST: digest, TAG_STAGE: self.stage, "uri": str(uri)}
        tags.update({k: str(v) for k, v in (extra or {}).items()})
        mlflow.log_input(dataset, context=context, tags=tags)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        _mlflow().log_text(redact(json.dumps(obj, indent=2, sort_keys=True, default=str)), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _mlflow().log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        _mlflow().set_tags({k: redact(str(v)) for k, v in tags.items()})

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the pipeline run (the parent) itself, e.g. with the run's promotion decision."""
        client = _mlflow().MlflowClient()
        parent = client.get_run(self.run_id).data.tags["mlflow.parentRunId"]
        for key, value in tags.items():
            client.set_tag(parent, key, redact(str(value)))


def close_killed_attempts(experiment_id: str, run_key: str, stage: str) -> list[str]:
    """Mark FAILED the runs of ``stage`` left RUNNING by killed attempts: those of pipeline run
    ``run_key``, and those whose process on this host is gone; returns their ids."""
    client = _mlflow().MlflowClient()
    running = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{stage}' AND attributes.status = 'RUNNING'")
    stale = [run for run in running if run.data.tags.get(TAG_RUN_KEY) == run_key or owner.gone({
        "host": run.data.tags.get(TAG_HOST), "pid": int(run.data.tags.get(TAG_PID, "0") or 0) or None})]
    for run in stale:
        client.set_tag(run.info.run_id, "sidreasoner.closed_by", "a later attempt of the stage (this one was killed)")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("MLflow: stage run %s of %s was left RUNNING by a killed attempt; marked FAILED",
                    run.info.run_id, stage)
    return [run.info.run_id for run in stale]


@contextlib.contextmanager
def stage_run(
    *,
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None,
    run_key: str,
    stage: str,
    parent_tags: Mapping[str, str],
    parent_name: str,
    close_parent: bool,
) -> Iterator[StageRun]:
    """Open ``stage``'s nested run under the pipeline run's parent (created if missing).

    A failing stage marks the parent FAILED; the last stage of the DAG (``close_parent``)
    marks it FINISHED when it succeeds. An earlier attempt of the same stage that is still
    RUNNING was killed (a process cannot close its run after SIGKILL or a lost node): one of the
    same pipeline run (a retry), or one whose process on this host is gone (a stage CLI started
    again), is marked FAILED first.
    """
    mlflow = _mlflow()
    holder = owner.record()
    experiment_id = configure(tracking_uri, experiment, artifact_location)
    parent_id = ensure_parent_run(experiment_id, run_key, parent_tags, parent_name)
    close_killed_attempts(experiment_id, run_key, stage)
    with mlflow.start_run(run_name=stage, parent_run_id=parent_id,
                          tags={TAG_STAGE: stage, TAG_RUN_KEY: run_key, TAG_HOST: holder["host"],
                                TAG_PID: str(holder["pid"])}) as run:
        log.info("MLflow: stage run %s (parent %s) at %s", run.info.run_id, parent_id, tracking_uri)
        try:
            yield StageRun(run.info.run_id, stage)
        except BaseException:
            end_parent_run(reattach(run.info.run_id, experiment_id, run_key, parent_id), "FAILED")
            raise
        parent_id = reattach(run.info.run_id, experiment_id, run_key, parent_id)
    if close_parent:
        end_parent_run(parent_id, "FINISHED")

