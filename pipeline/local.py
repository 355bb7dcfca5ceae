"""``sidreasoner run``: the whole DAG on this machine through kfp's local SubprocessRunner.

A run folder holds everything of one run::

    DIR/config.yaml     the validated config (after --set overrides)
    DIR/kfp/            kfp's local pipeline root: one folder per task with its outputs
    DIR/mlflow.db       the MLflow store (sqlite) unless tracking.uri is set
    DIR/mlartifacts/    MLflow artifacts of that store
    DIR/run.json        run id, config, every stage's output URIs and metadata, every stage's
                        stats, and the final metrics (evaluate's metrics table as rows); for a
                        failed run, the failed stage and its one-line message
    DIR/failures/       where a failing task leaves its message (``SIDREASONER_FAILURE_DIR``)

A failed run raises :class:`RunFailed`, an expected error whose message is the failed stage's
own (``stage ingest failed: reviews.json.gz line 4: malformed JSON``), not kfp's summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import secrets
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

import yaml

from components.common import hardware, lineage, storage
from components.common.config import config_hash
from components.common.errors import ExpectedError
from components.common.logs import KFP_EXECUTOR_FORMAT
from components.common.stage import FAILURE_DIR_ENV, StageContext, git_commit
from pipeline.config import DECLARATIONS, RunConfig
from pipeline.dag import build_pipeline, output_name

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RunFailed(ExpectedError, RuntimeError):
    """A stage of a local run failed; the message is that stage's (its exit code too)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def stage_context(cfg: RunConfig, profile: str, tracking_uri: str, artifact_location: str | None) -> StageContext:
    return StageContext(
        pipeline_name=cfg.run.name, profile=profile, config_hash=config_hash(cfg),
        git_commit=git_commit(), images={s: cfg.images.for_stage(s) for s in cfg.dag_stages()},
        tracking_uri=tracking_uri, experiment=cfg.tracking.experiment,
        artifact_location=artifact_location, cache_uri=cfg.storage.cache_uri, seed=cfg.run.seed,
        cpu_kernels=cfg.run.cpu_kernels,
        final_stage=cfg.dag_stages()[-1], gcs_retry_deadline_s=cfg.storage.gcs_retry_deadline_s,
        gcs_timeout_s=cfg.storage.gcs_timeout_s,
    )


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside it (MLflow would use ./mlruns of the CWD);
    a tracking server decides for itself (None)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    return None


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("build/runs") / f"{cfg.run.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


#: Lines of kfp's local runner that say nothing the stages' own lines do not: the header of the
#: streamed task log, and the executor's note that it wrote its output file.
KFP_RUNNER_CHATTER = re.compile(r"(- INFO - Streamed logs:|INFO root: Wrote executor output file to )")
#: The header of the block in which kfp's local runner lists a finished task's output artifacts
#: (their URIs and metadata, which run.json records); the block ends at its line of dashes.
KFP_TASK_OUTPUTS = re.compile(r"- INFO - Task .* outputs:$")


class ExecutorNoiseFilter(io.TextIOBase):
    """Standard output during a local run, without what kfp prints around each task: its
    executor's own log lines (``[KFP Executor ...]``), the executor input and output JSON it dumps,
    the list of each task's output artifacts and blank lines. The stages' own lines (their log,
    progress and results) and kfp's one line per task start and end pass. ``sidreasoner run
    --verbose`` shows everything."""

    def __init__(self, target: TextIO):
        self.target, self.pending, self.depth, self.json_next = target, "", 0, False
        self.in_outputs = False

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if self.keep(line.strip()):
                self.target.write(line + "\n")
        return len(text)

    def keep(self, line: str) -> bool:
        if self.json_next and line.startswith(("{", "[")) or self.depth:
            self.json_next = False
            self.depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
            return False
        self.json_next = False
        if self.in_outputs:
            self.in_outputs = not line.startswith("-----")
            return not self.in_outputs
        if line.startswith(KFP_EXECUTOR_FORMAT):
            self.json_next = line.endswith(":")  # "Got executor_input:" then the JSON
            return False
        if KFP_TASK_OUTPUTS.search(line):
            self.in_outputs = True
            return False
        return bool(line) and not KFP_RUNNER_CHATTER.search(line)

    def flush(self) -> None:
        self.target.flush()


#: Per-stage numbers the run record's hardware summary collects: from the stats output's metadata
#: (GPU stages, :func:`components.common.hardware.gpu_stage`) and from the stage's stats.
STAGE_HARDWARE_METADATA = ("gpus", "gpu_peak_memory_mib", "gpu_memory_at_start_mib")
STAGE_HARDWARE_STATS = ("tokens_per_s", "stage_seconds")


def hardware_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The machine (libraries, NVIDIA driver, GPUs) and, per stage, its GPUs, peak GPU memory and
    throughput (``tokens_per_s`` where the stage reports one)."""
    stages = {}
    for stage, outputs in record["stages"].items():
        metadata = outputs.get("stats", {}).get("metadata", {})
        stats = record["stats"].get(stage, {})
        entry = {key: metadata[key] for key in STAGE_HARDWARE_METADATA if key in metadata}
        entry.update({key: stats[key] for key in STAGE_HARDWARE_STATS if isinstance(stats, dict) and key in stats})
        if entry:
            stages[stage] = entry
    return {**hardware.environment(), "stages": stages}


def run_local(cfg: RunConfig, profile: str, out: Path, verbose: bool = False) -> dict[str, Any]:
    """Run the pipeline locally; returns (and writes) the run record ``out/run.json``."""
    from kfp import local

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage.write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tracking_uri = cfg.tracking.uri or f"sqlite:///{out / 'mlflow.db'}"
    artifact_location = cfg.tracking.artifact_location or local_artifact_root(tracking_uri)
    ctx = stage_context(cfg, profile, tracking_uri, artifact_location)
    run_key = f"local-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"

    pipeline_func = build_pipeline(cfg, ctx, for_cluster=False)
    experiment_id = lineage.configure(tracking_uri, ctx.experiment, artifact_location)
    parent_id = lineage.ensure_parent_run(experiment_id, run_key, {
        lineage.TAG_CONFIG_HASH: ctx.config_hash, lineage.TAG_PROFILE: profile,
        lineage.TAG_GIT: ctx.git_commit, lineage.TAG_IMAGES: json.dumps(ctx.images, sort_keys=True),
        "sidreasoner.run_dir": str(out),
    }, run_name=f"{cfg.run.name}-{run_key}")
    lineage.log_artifact_to(parent_id, out / "config.yaml")

    # Tasks run as subprocesses of this one and inherit this environment.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    failures = out / "failures"
    shutil.rmtree(failures, ignore_errors=True)
    os.environ[FAILURE_DIR_ENV] = str(failures)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"),
               raise_on_error=True)
    # The stage images exist only on a cluster; locally this interpreter has the same packages.
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")  # display_name
    record: dict[str, Any] = {
        "run_id": run_key, "profile": profile, "status": "running",
        "mlflow": {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent_id},
        "config": cfg.model_dump(mode="json"), "stages": {}, "stats": {}, "metrics": [],
    }
    try:
        with contextlib.redirect_stdout(sys.stdout if verbose else ExecutorNoiseFilter(sys.stdout)):
            result = pipeline_func(run_key=run_key)
    except BaseException as exc:
        failure = stage_failure(failures, _ANSI.sub("", str(exc)))
        record.update(status="failed", failed_stage=failure["stage"], error=failure["message"])
        lineage.end_parent_run(parent_id, "FAILED")
        storage.write_json(out / "run.json", record)
        if not isinstance(exc, Exception):  # Ctrl-C, SystemExit: not a stage's failure
            raise
        raise RunFailed(f"stage {failure['stage']} failed: {failure['message']}" if failure["stage"]
                        else failure["message"], failure.get("exit_code", 1)) from exc
    finally:
        os.environ.pop(FAILURE_DIR_ENV, None)
    stages = cfg.dag_stages()
    for stage in stages:
        outs = DECLARATIONS[stage].outputs
        record["stages"][stage] = {
            name: {"uri": result.outputs[output_name(stage, name)].uri,
                   "metadata": dict(result.outputs[output_name(stage, name)].metadata)}
            for name in outs
        }
    for stage in stages:
        for name in ("stats", "previous", "decision"):  # each stage's JSON report
            if name in record["stages"][stage]:
                record["stats"][stage] = storage.read_json(record["stages"][stage][name]["uri"])
    record["hardware"] = hardware_summary(record)
    metrics = storage.read_parquet(record["stages"]["evaluate"]["metrics"]["uri"])
    record["metrics"] = metrics.to_pylist()
    record["status"] = "succeeded"
    lineage.end_parent_run(parent_id, "FINISHED")
    storage.write_json(out / "run.json", record)
    return record


def stage_failure(folder: Path, runner_message: str) -> dict[str, Any]:
    """What failed: the message a failing task left in ``folder`` (the first to fail, if several
    did), else the runner's own message (a task killed before it could say anything)."""
    records = sorted((storage.read_json(path) for path in folder.glob("*.json")),
                     key=lambda r: (not r.get("expected"), r.get("stage", "")))
    if records:
        return records[0]
    task = re.search(r"Inner task failed: (\S+?)\.?$", runner_message.strip())
    return {"stage": task.group(1) if task else None, "message": runner_message.strip(), "exit_code": 1}
