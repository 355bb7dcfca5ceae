"""``sidreasoner lineage RUN_OR_MODEL``: the chain from a model back to the catalog, from MLflow alone.

Accepts a registered model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``NAME@ALIAS``), a
pipeline run's MLflow run id (or any of its stage runs' ids), or a run key (the KFP run id, or
``local-...``). Prints the pipeline run, then each stage from the model back to ingest with what
identifies its work (teacher model and prompt hashes, SID method and collisions, training steps,
scores), and every input artifact with its digest, checked against the output of the stage that
produced it: an unbroken chain ends at the raw catalog files and their digests.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.lineage import TAG_DIGEST, TAG_RUN_KEY, TAG_STAGE, _mlflow
from components.common.registry import TAG_MODEL_URI, TAG_PROMOTION
from pipeline.config import STAGES

#: Stages from the model back to the catalog (the order the chain is printed in).
CHAIN = tuple(reversed(STAGES))
#: What identifies each stage's work: params, metrics (exact keys or a regex) and tags.
FACTS: dict[str, dict[str, list[str]]] = {
    "previous_model": {"tags": ["sidreasoner.previous_model"]},
    "promote": {"metrics": ["promoted", "score", "production_score"]},
    "evaluate": {"params": ["modes", "beam_width", "max_examples"], "metrics": [r"re:.*\.(hr|ndcg)_at_10"]},
    "grpo": {"params": ["reward.mode", "learning_rate", "num_generations", "beta"],
             "metrics": ["global_step", "reward_first", "reward_last", "hit_rate_last",
                         "reasoning_tokens_first", "reasoning_tokens_last"]},
    "reason_sft": {"params": ["learning_rate"], "metrics": ["global_step", "best_eval_loss"]},
    "align_sft": {"params": ["learning_rate", "backbone.uri"], "metrics": ["global_step", "best_eval_loss"],
                  "tags": ["sidreasoner.warm_start_from"]},
    "teacher_corpus": {"params": ["teacher.backend", "teacher.model", "enrichment.prompt_version"],
                       "metrics": ["corpus.rows", "reasoning.rows"], "artifact": ["teacher_corpus_stats.json",
                                                                                 "prompt_templates"]},
    "sid_quantize": {"params": ["method", "codebook_sizes", "encoder.model"],
                     "metrics": ["items", "collisions_after.duplicate_sids", r"re:incremental\..*"],
                     "tags": ["sidreasoner.previous_model"]},
    "ingest": {"params": ["format", "source"], "tags": ["sidreasoner.catalog_digest"]},
}


class LineageError(LookupError):
    """The target is not a registered model, a run id or a run key that MLflow knows."""


@dataclass
class Artifact:
    name: str
    uri: str
    digest: str


@dataclass
class StageRecord:
    stage: str
    run_id: str
    status: str
    inputs: list[Artifact] = field(default_factory=list)
    outputs: list[Artifact] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def _datasets(run: Any, context: str) -> list[Artifact]:
    found = []
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        if tags.get("mlflow.data.context") == context:
            found.append(Artifact(item.dataset.name, tags.get("uri", ""), tags.get(TAG_DIGEST, item.dataset.digest)))
    return sorted(found, key=lambda a: a.name)


def _pick(values: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The entries of ``values`` named in ``keys`` (``re:PATTERN`` keys match by regex)."""
    picked = {}
    for key in keys:
        if key.startswith("re:"):
            pattern = re.compile(key[3:])
            picked.update({k: v for k, v in sorted(values.items()) if pattern.fullmatch(k)})
        elif key in values:
            picked[key] = values[key]
    return picked


def _facts(client: Any, run: Any, stage: str) -> dict[str, Any]:
    spec = FACTS.get(stage, {})
    facts: dict[str, Any] = {}
    facts.update(_pick(run.data.params, spec.get("params", [])))
    facts.update({k: round(v, 4) for k, v in _pick(run.data.metrics, spec.get("metrics", [])).items()})
    facts.update(_pick(run.data.tags, spec.get("tags", [])))
    if "artifact" in spec:
        name, key = spec["artifact"]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                stats = json.loads(Path(client.download_artifacts(run.info.run_id, name, tmp)).read_text())
                facts[key] = stats.get(key)
            except Exception as exc:  # an artifact store out of reach must not hide the rest
                facts[key] = f"(unavailable: {exc})"
    return facts


def resolve(target: str) -> tuple[Any, Any | None]:
    """(pipeline parent run, registered model version or None) for ``target``."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    version = None
    name = target.removeprefix("models:/")
    if "@" in name:
        model, alias = name.split("@", 1)
        try:
            version = client.get_model_version_by_alias(model, alias)
        except mlflow.exceptions.MlflowException as exc:
            raise LineageError(f"no registered model version {model}@{alias}: {exc}") from None
    elif target.startswith("models:/") and "/" in name:
        model, number = name.split("/", 1)
        version = client.get_model_version(model, number)
    if version is not None:
        run = client.get_run(version.run_id)
    elif re.fullmatch(r"[0-9a-f]{32}", target):
        run = client.get_run(target)
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=f"tags.`{TAG_RUN_KEY}` = '{target}'", max_results=50)
        if not runs:
            raise LineageError(f"{target!r} is neither a registered model, a run id nor a known run key")
        run = runs[0]
    parent_id = run.data.tags.get("mlflow.parentRunId")
    return (client.get_run(parent_id) if parent_id else run), version


def collect(target: str) -> dict[str, Any]:
    """The whole chain as data (what :func:`render` prints)."""
    client = _mlflow().MlflowClient()
    parent, version = resolve(target)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=200)
    by_stage = {c.data.tags.get(TAG_STAGE): c for c in children}
    stages = []
    for stage in CHAIN:
        run = by_stage.get(stage)
        if run is None:
            continue
        stages.append(StageRecord(stage, run.info.run_id, run.info.status, _datasets(run, "input"),
                                  _datasets(run, "output"), _facts(client, run, stage)))
    produced = {a.digest: f"{s.stage}.{a.name}" for s in stages for a in s.outputs}
    tags = parent.data.tags
    return {
        "model": None if version is None else {
            "name": version.name, "version": version.version, "aliases": list(version.aliases or []),
            "model_uri": version.tags.get(TAG_MODEL_URI), "tags": dict(version.tags)},
        "pipeline_run": {
            "run_id": parent.info.run_id, "run_key": tags.get(TAG_RUN_KEY), "status": parent.info.status,
            "profile": tags.get("sidreasoner.profile"), "config_hash": tags.get("sidreasoner.config_hash"),
            "git_commit": tags.get("mlflow.source.git.commit"), "promotion": tags.get(TAG_PROMOTION),
            "images": json.loads(tags.get("sidreasoner.images", "{}")),
        },
        "stages": stages,
        "produced_by": produced,
    }


def render(chain: dict[str, Any]) -> str:
    lines = []
    if chain["model"]:
        m = chain["model"]
        aliases = "".join(f" @{a}" for a in m["aliases"])
        lines.append(f"model {m['name']} v{m['version']}{aliases}  {m['model_uri']}")
        for key in ("sidreasoner.metric", "sidreasoner.metric_value"):
            if key in m["tags"]:
                lines.append(f"  {key.split('.')[-1]}: {m['tags'][key]}")
    run = chain["pipeline_run"]
    lines.append(f"pipeline run {run['run_key']} (MLflow {run['run_id']}, {run['status']})")
    for key in ("profile", "config_hash", "git_commit", "promotion"):
        if run[key]:
            lines.append(f"  {key}: {run[key]}")
    produced = chain["produced_by"]
    for record in chain["stages"]:
        lines.append(f"\n{record.stage}  (MLflow {record.run_id}, {record.status})")
        for key, value in record.facts.items():
            lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        for art in record.inputs:
            source = produced.get(art.digest)
            link = f"= {source}" if source else ("raw input" if record.stage == "ingest" else "NOT produced by this run")
            lines.append(f"  <- {art.name:<16} {art.digest[:23]}  {link}  {art.uri}")
        for art in record.outputs:
            lines.append(f"  -> {art.name:<16} {art.digest[:23]}  {art.uri}")
    return "\n".join(lines)
