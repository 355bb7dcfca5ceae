"""Training machinery shared by the SFT and GRPO stages: launch, preemption-safe checkpoints,
MLflow metrics and model logging.

A training stage runs in two parts:

* the **stage process** (kfp component or CLI) validates config and inputs, prepares the base
  model and the tokenized data in a local work folder, writes a :class:`TrainJob` JSON file, and
  afterwards publishes the trained model and logs it to MLflow;
* the **training processes** run ``job.entry`` (``module:function``) with the job. On a CPU that
  is one call in the stage process itself; on GPUs it is ``accelerate launch`` with one process
  per GPU (:func:`launch_command`), data-parallel through DDP or DeepSpeed ZeRO-2/3 with the
  config files in ``components/common/deepspeed/``.

Preemption: every ``checkpoint.every_steps`` optimizer steps the HF Trainer writes a checkpoint
(weights, optimizer, scheduler, RNG states, trainer state with the step counter) that is
published to ``checkpoint.uri`` (local or ``gs://``). A checkpoint folder there is *complete*
once its ``_MANIFEST.json`` exists (written last). A restarted stage downloads the last
complete checkpoint (and the best one, for ``load_best_model_at_end``) and resumes from it: same
global step, optimizer state, and data position (the Trainer skips the batches already seen).
The Trainer callbacks doing this live in ``components.common.trainer_callbacks`` (imported by
the training processes only: ``transformers`` is slow to import and config loading must not pay
for it). ``<uri>/job.json`` holds the job's fingerprint (config + input digests) so a checkpoint of
another job is never resumed by mistake, and ``<uri>/final`` the finished model, so a stage
restarted after training (e.g. while publishing) does not train again. Once the model is
published the checkpoints are deleted; ``final`` stays.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from components.common import modeling, storage
from components.common.config import ConfigError, Section
from components.common.logs import setup_logging

log = logging.getLogger(__name__)

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
#: DeepSpeed config file of each launch strategy ("auto" values are filled by the HF Trainer).
DEEPSPEED_CONFIGS = {"zero2": DEEPSPEED_DIR / "zero2.json", "zero3": DEEPSPEED_DIR / "zero3.json"}
JOB_FILE, RESULT_FILE, FINAL = "job.json", "training_result.json", "final"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)/" + re.escape(storage.MANIFEST) + "$")


# ----------------------------------------------------------------------------------------------
# Config sections shared by every training stage
# ----------------------------------------------------------------------------------------------


class LaunchConfig(Section):
    """How the training processes are started on GPUs (a CPU run always trains in-process)."""

    num_processes: int | None = Field(None, ge=1, le=64)
    """Training processes, one per GPU. Unset: every visible GPU (minus GPUs given to a vLLM
    server). More than the visible GPUs is an error."""
    strategy: Literal["ddp", "zero2", "zero3"] = "zero2"
    """Data parallelism: plain DDP, or DeepSpeed ZeRO stage 2 / 3 (config files shipped in
    components/common/deepspeed/)."""
    main_process_port: int = Field(29500, ge=1024, le=65535)
    """Rendezvous port of the launched processes."""


class CheckpointConfig(Section):
    """Preemption-safe checkpoints, synced to object storage."""

    every_steps: int = Field(50, ge=1)
    """Write and publish a checkpoint every this many optimizer steps (plus the evaluation-time
    saves used by early stopping)."""
    uri: str | None = None
    """Where checkpoints are published (local path or gs://). Unset:
    <storage.cache_uri>/checkpoints/<run key>/<stage>, so a retried task of the same pipeline run
    resumes and a new run starts fresh."""
    keep: int = Field(2, ge=1)
    """Published checkpoints kept (the newest ones, plus the best one when early stopping)."""
    local_dir: str | None = None
    """Local scratch folder for the base model, tokenized data and checkpoints. Unset: the
    system temp folder."""


class TrainerSettings(Section):
    """Optimisation settings shared by the SFT and GRPO stages (each stage sets its defaults)."""

    learning_rate: float = Field(1e-5, gt=0, le=1.0)
    """Peak learning rate (AdamW)."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    num_train_epochs: float = Field(1.0, gt=0)
    """Epochs over the training data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides num_train_epochs)."""
    per_device_batch_size: int = Field(1, ge=1)
    """Micro-batch per process; gradient accumulation makes up the global batch."""
    bf16: bool = True
    """bf16 mixed precision (needs a GPU: a CPU run must set false)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    logging_steps: int = Field(10, ge=1)
    """Log (and send to MLflow) training metrics every this many steps."""
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    """Processes and data parallelism on GPUs."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Preemption-safe checkpoints."""
    log_model_weights: bool = False
    """Also copy the weights into MLflow (mlflow.transformers flavor). Off: MLflow records the
    model as an external LoggedModel pointing at the output artifact (no second copy)."""


# ----------------------------------------------------------------------------------------------
# Hardware pre-flight and launch planning
# ----------------------------------------------------------------------------------------------


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_hardware(settings: TrainerSettings, prefix: str, gpus: int) -> None:
    """Refuse settings the machine cannot run, before any work starts."""
    if gpus == 0:
        if settings.bf16:
            raise ConfigError(f"{prefix}.bf16: bf16 was requested but no GPU is visible; set "
                              f"{prefix}.bf16=false for a CPU run")
        if (settings.launch.num_processes or 1) > 1:
            raise ConfigError(f"{prefix}.launch.num_processes: {settings.launch.num_processes} processes "
                              "requested but no GPU is visible (a CPU run trains in one process)")
    elif settings.launch.num_processes and settings.launch.num_processes > gpus:
        raise ConfigError(f"{prefix}.launch.num_processes: {settings.launch.num_processes} processes "
                          f"requested but only {gpus} GPU(s) are available for training")


def world_size(settings: TrainerSettings, gpus: int) -> int:
    """Training processes for ``gpus`` usable GPUs (1 on a CPU)."""
    return 1 if gpus == 0 else (settings.launch.num_processes or gpus)


def gradient_accumulation(global_batch: int, per_device: int, world: int, what: str) -> int:
    """Accumulation steps making ``global_batch``; it must be a multiple of per_device x world."""
    step = per_device * world
    if global_batch % step:
        raise ConfigError(f"{what} ({global_batch}) must be a multiple of per_device_batch_size x processes "
                          f"({per_device} x {world} = {step})")
    return global_batch // step


def launch_command(job_path: str | Path, launch: LaunchConfig, num_processes: int, bf16: bool) -> list[str]:
    """``accelerate launch`` of the training worker over ``num_processes`` GPUs.

    DeepSpeed settings go through the Trainer (``TrainJob.deepspeed``), which fills the config
    file's "auto" values from the training arguments; accelerate starts the processes.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(num_processes), "--num_machines", "1",
           "--mixed_precision", "bf16" if bf16 else "no",
           "--main_process_port", str(launch.main_process_port),
           "--dynamo_backend", "no"]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    cmd += ["-m", "components.common.training", str(job_path)]
    return cmd


# ----------------------------------------------------------------------------------------------
# The job handed to the training processes
# ----------------------------------------------------------------------------------------------


class TrainJob(BaseModel):
    """Everything a training process needs; written as JSON next to the data it points to."""

    entry: str
    """``module:function`` called with this job in every training process."""
    stage: str
    payload: dict[str, Any]
    """Stage-specific settings and local paths (config section, datasets, base model)."""
    output_dir: str
    """Local folder of the Trainer's checkpoints."""
    final_dir: str
    """Local folder the trained model is saved to (by the main process)."""
    resume_from: str | None = None
    """Local checkpoint to resume from (restored from ``checkpoint_uri``)."""
    checkpoint_uri: str
    checkpoint_every: int
    keep_checkpoints: int
    world_size: int = 1
    use_cpu: bool = True
    deepspeed: str | None = None
    """DeepSpeed config file (ZeRO-2/3) or None for DDP / a single process."""
    seed: int = 42
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    """The stage's MLflow run: the main training process logs step metrics into it."""

    @model_validator(mode="after")
    def _entry(self) -> TrainJob:
        if ":" not in self.entry:
            raise ValueError(f"entry must be 'module:function' (got {self.entry!r})")
        return self

    @property
    def result_path(self) -> Path:
        return Path(self.final_dir) / RESULT_FILE


def run_job(job: TrainJob, job_path: Path, launch: LaunchConfig, bf16: bool, gpu_ids: Sequence[int] = ()) -> dict:
    """Run the job in-process (CPU) or through ``accelerate launch`` on ``gpu_ids``; returns the
    main process's result (``final_dir/result.json``)."""
    job_path.write_text(job.model_dump_json(indent=1))
    if job.use_cpu:
        run_entry(job)
    else:
        cmd = launch_command(job_path, launch, job.world_size, bf16)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, gpu_ids)),
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        log.info("launching %d training process(es): %s", job.world_size, " ".join(cmd))
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{job.stage}: training processes failed (exit code {proc.returncode}); "
                               "see their log above")
    if not job.result_path.is_file():
        raise RuntimeError(f"{job.stage}: training finished without writing {job.result_path}")
    return json.loads(job.result_path.read_text())


def quiet_progress_bars() -> None:
    """No tqdm bars from datasets/transformers: stage logs are read in pod and CI logs, where
    progress comes from periodic lines instead (``trainer_callbacks.ProgressLog``)."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def run_entry(job: TrainJob) -> None:
    quiet_progress_bars()
    module, _, func = job.entry.partition(":")
    getattr(importlib.import_module(module), func)(job)


def main(argv: list[str] | None = None) -> int:
    """``python -m components.common.training JOB.json``: one training process (under accelerate)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m components.common.training JOB.json", file=sys.stderr)
        return 2
    setup_logging()
    run_entry(TrainJob.model_validate_json(Path(args[0]).read_text()))
    return 0


def training_arguments(settings: TrainerSettings, job: TrainJob, gradient_accumulation_steps: int) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig`` and ``GRPOConfig`` for ``settings`` and ``job``."""
    return dict(
        output_dir=job.output_dir,
        seed=job.seed,
        data_seed=job.seed,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.per_device_batch_size,
        per_device_eval_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        bf16=settings.bf16,
        use_cpu=job.use_cpu,
        gradient_checkpointing=settings.gradient_checkpointing,
        deepspeed=job.deepspeed,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        report_to=[],
        disable_tqdm=True,
        save_only_model=False,
        save_total_limit=job.keep_checkpoints + 1,
        dataloader_num_workers=0,
    )


# ----------------------------------------------------------------------------------------------
# Checkpoints in object storage
# ----------------------------------------------------------------------------------------------


def checkpoint_uri(settings: TrainerSettings, cache_uri: str, run_key: str, stage: str) -> str:
    """The configured checkpoint URI, else one derived from the cache root, run key and stage."""
    return settings.checkpoint.uri or storage.join(cache_uri, "checkpoints", run_key or "adhoc", stage)


def complete_checkpoints(uri: str) -> list[int]:
    """Steps of the complete (manifest present) checkpoints published under ``uri``, ascending."""
    return sorted(int(m.group(1)) for f in storage.list_files(uri) if (m := _CHECKPOINT.match(f)))


def _publish_dir(local: Path, uri: str) -> None:
    if storage.is_gcs(uri):
        storage.upload_dir(local, uri)  # manifest written last
    else:
        storage.copy(str(local), uri)  # staged beside the target, manifest, then renamed


def _fetch_dir(uri: str, local: Path) -> None:
    if storage.is_gcs(uri):
        storage.download_dir(uri, local)
    else:
        shutil.copytree(uri, local, ignore=shutil.ignore_patterns(storage.MANIFEST))


def _delete_dir(uri: str) -> None:
    """Remove a published folder; on GCS the manifest goes first so it is never seen complete."""
    if storage.is_gcs(uri):
        bucket_name, prefix = storage.split_gcs(uri)
        bucket = storage.gcs_client().bucket(bucket_name)
        names = storage.list_files(uri)
        for name in sorted(names, key=lambda n: n != storage.MANIFEST):
            bucket.blob(f"{prefix}/{name}").delete()
    else:
        shutil.rmtree(uri, ignore_errors=True)


def publish_checkpoint(local: Path, uri: str, step: int, keep: int, best_step: int | None) -> None:
    """Publish ``local`` as ``<uri>/checkpoint-<step>``, then drop all but the ``keep`` newest
    (and the best) published checkpoints."""
    start = time.monotonic()
    _publish_dir(local, storage.join(uri, f"checkpoint-{step}"))
    steps = complete_checkpoints(uri)
    keep_steps = set(steps[-keep:]) | ({best_step} if best_step else set())
    for old in steps:
        if old not in keep_steps:
            _delete_dir(storage.join(uri, f"checkpoint-{old}"))
    log.info("checkpoint %d published to %s in %.1fs", step, uri, time.monotonic() - start)


def drop_checkpoints(uri: str) -> None:
    """Delete every published checkpoint under ``uri`` (``final`` and ``job.json`` stay)."""
    for step in complete_checkpoints(uri):
        _delete_dir(storage.join(uri, f"checkpoint-{step}"))


def claim_checkpoints(uri: str, fingerprint: str, stage: str) -> None:
    """Record (or check) which job the checkpoints under ``uri`` belong to."""
    marker = storage.join(uri, JOB_FILE)
    if storage.exists(marker):
        found = storage.read_json(marker)
        if found.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{stage}.checkpoint.uri: {uri} holds checkpoints of another job (config or inputs differ: "
                f"fingerprint {found.get('fingerprint')} != {fingerprint}); point checkpoint.uri elsewhere "
                "or delete that folder")
        return
    storage.write_json(marker, {"fingerprint": fingerprint, "stage": stage})


def restore_checkpoint(uri: str, output_dir: Path) -> Path | None:
    """Download the last complete checkpoint under ``uri`` (and the best one, if it differs and
    still exists) into ``output_dir``; returns the local checkpoint to resume from, or None."""
    steps = complete_checkpoints(uri)
    if not steps:
        return None
    latest = steps[-1]
    local = output_dir / f"checkpoint-{latest}"
    _fetch_dir(storage.join(uri, f"checkpoint-{latest}"), local)
    state_file = local / "trainer_state.json"
    state = json.loads(state_file.read_text())
    best = state.get("best_global_step")
    if best and best != latest and best in steps:
        _fetch_dir(storage.join(uri, f"checkpoint-{best}"), output_dir / f"checkpoint-{best}")
    if best in steps:  # the recorded path was on the machine that wrote it
        state["best_model_checkpoint"] = str(output_dir / f"checkpoint-{best}")
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
    log.info("resuming from checkpoint %d of %s", latest, uri)
    return local


def publish_final(local: Path, uri: str) -> None:
    """Keep the finished model next to the checkpoints, so a restart after training skips it."""
    _publish_dir(local, storage.join(uri, FINAL))


def fetch_final(uri: str, local: Path) -> bool:
    """Download ``<uri>/final`` if a complete one exists; True when it did."""
    final = storage.join(uri, FINAL)
    if not storage.exists(storage.join(final, storage.MANIFEST)):
        return False
    _fetch_dir(final, local)
    return True


def work_dir(settings: TrainerSettings, stage: str, fingerprint: str) -> Path:
    """A fresh local work folder for one job (same path for the same job, so a resumed state's
    checkpoint paths stay valid)."""
    root = Path(settings.checkpoint.local_dir or Path(tempfile.gettempdir()) / "sidreasoner-train")
    path = root / f"{stage}-{fingerprint[:16]}"
    shutil.rmtree(path, ignore_errors=True)  # restarts resume from object storage, never from leftovers
    path.mkdir(parents=True)
    return path


def job_fingerprint(section: BaseModel, inputs: Mapping[str, str]) -> str:
    """Digest of what a training job depends on: its config and its inputs' content digests."""
    payload = json.dumps({"config": section.model_dump(mode="json"), "inputs": dict(sorted(inputs.items()))},
                         sort_keys=True)
    return storage.bytes_digest(payload.encode()).split(":", 1)[1]


def save_trained_model(trainer: Any, job: TrainJob, sid_vocab: Sequence[str]) -> None:
    """The trained (best, when early stopping) model + tokenizer + generation config + SID
    vocabulary, into ``job.final_dir``."""
    trainer.save_model(job.final_dir)  # gathers ZeRO-3 shards; the main process writes
    if trainer.is_world_process_zero():
        modeling.write_sid_vocabulary(job.final_dir, sid_vocab)


def write_result(job: TrainJob, trainer: Any, resumed_from: int | None, extra: Mapping[str, Any] | None = None) -> None:
    """Main process: ``final_dir/result.json`` with the step counter, resume point and log history."""
    if not trainer.is_world_process_zero():
        return
    state = trainer.state
    result = {"global_step": state.global_step, "resumed_from_step": resumed_from,
              "epoch": state.epoch, "best_metric": state.best_metric,
              "best_global_step": state.best_global_step,
              "num_input_tokens_seen": state.num_input_tokens_seen,
              "log_history": state.log_history, **(extra or {})}
    Path(job.final_dir).mkdir(parents=True, exist_ok=True)
    job.result_path.write_text(json.dumps(result, indent=1, default=str))


def resumed_step(job: TrainJob) -> int | None:
    if not job.resume_from:
        return None
    return json.loads((Path(job.resume_from) / "trainer_state.json").read_text())["global_step"]


def run_training(*, stage: str, cfg: TrainerSettings, ctx: Any, tracker: Any, output: str,
                 input_digests: Mapping[str, str], entry: str, world: int, gpu_ids: Sequence[int],
                 prepare: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]],
                 around: Callable[[dict[str, Any]], contextlib.AbstractContextManager] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (resuming from published checkpoints, or reusing this job's finished model) and
    publish the model folder at ``output``; returns (stage stats, training result).

    ``prepare(work)`` writes the base model and data under ``work`` and returns the job
    payload and data stats; ``around(payload)`` wraps the training run (e.g. a vLLM server).
    ``ctx`` is the stage's StageContext, ``tracker`` its StageRun.
    """
    quiet_progress_bars()
    fingerprint = job_fingerprint(cfg, input_digests)
    uri = checkpoint_uri(cfg, ctx.cache_uri, ctx.run_key, stage)
    claim_checkpoints(uri, fingerprint, stage)
    work = work_dir(cfg, stage, fingerprint)
    final = work / FINAL
    stats: dict[str, Any] = {"checkpoint_uri": uri, "fingerprint": fingerprint, "world_size": world}
    start = time.monotonic()
    if fetch_final(uri, final):
        log.info("%s: %s already holds the trained model of this job; not training again", stage, uri)
        result = json.loads((final / RESULT_FILE).read_text())
        stats["reused_final"] = True
    else:
        payload, stats["data"] = prepare(work)
        resume = restore_checkpoint(uri, work / "checkpoints")
        gpu = bool(gpu_ids)
        job = TrainJob(
            entry=entry, stage=stage, payload=payload, output_dir=str(work / "checkpoints"), final_dir=str(final),
            resume_from=str(resume) if resume else None, checkpoint_uri=uri,
            checkpoint_every=cfg.checkpoint.every_steps, keep_checkpoints=cfg.checkpoint.keep,
            world_size=world, use_cpu=not gpu,
            deepspeed=str(DEEPSPEED_CONFIGS[cfg.launch.strategy]) if gpu and cfg.launch.strategy in DEEPSPEED_CONFIGS
            else None,
            seed=ctx.seed, tracking_uri=ctx.tracking_uri, mlflow_run_id=tracker.run_id,
        )
        with (around(payload) if around else contextlib.nullcontext()):
            result = run_job(job, work / JOB_FILE, cfg.launch, cfg.bf16, gpu_ids)
        publish_final(final, uri)
    storage.copy(str(final), output)
    drop_checkpoints(uri)  # published: a retry reuses <uri>/final, the optimizer states can go
    shutil.rmtree(work, ignore_errors=True)
    stats["stage_seconds"] = time.monotonic() - start
    return stats, result


def numeric_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a Trainer log record."""
    return {k: float(v) for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# ----------------------------------------------------------------------------------------------
# MLflow model logging
# ----------------------------------------------------------------------------------------------

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
                 stats: dict[str, Any], lineage: Mapping[str, str],
                 metrics: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Stats artifact, MLflow metrics (``metrics``, default: the numbers at the top level of
    ``stats``), and the model logged to MLflow with its lineage."""
    model_digest = storage.digest(outputs["model"])
    summary = numeric_logs(metrics if metrics is not None else stats)
    with (storage.local_copy(outputs["model"]) if cfg.log_model_weights else contextlib.nullcontext()) as model_dir:
        stats["mlflow_model_id"] = log_model(
            run_id=tracker.run_id, name=stage, model_dir=model_dir, model_uri=outputs["model"],
            model_digest=model_digest, lineage=lineage, params={"stage": stage, "config": cfg.model_dump(mode="json")},
            metrics=summary)
    stats["lineage"] = dict(lineage)
    stats_digest = storage.write_json(outputs["stats"], stats)
    tracker.log_metrics(summary)
    tracker.log_dict(stats, f"{stage}_stats.json")
    return {"model": {"digest": model_digest, "global_step": stats["global_step"]},
            "stats": {"digest": stats_digest}}


if __name__ == "__main__":
    sys.exit(main())
