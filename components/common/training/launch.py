"""How a training stage runs its engine: hardware pre-flight, the job handed to the training
processes, ``accelerate launch``, and the driver that trains, resumes or reuses a finished job.

A training stage runs in two parts:

* the **stage process** (kfp component or CLI) validates config and inputs, prepares the base
  model and the tokenized data in a local work folder, writes a :class:`TrainJob` JSON file, and
  afterwards publishes the trained model (:func:`run_training`);
* the **training processes** run ``job.entry`` (an engine's ``module:function``, e.g.
  :func:`components.common.training.sft.train_sft`) with the job. On a CPU that is one call in the
  stage process itself; on GPUs it is ``accelerate launch`` with one process per GPU
  (:func:`launch_command`), data-parallel through DDP or DeepSpeed ZeRO-2/3 with the config files in
  ``components/common/training/deepspeed/``.

Preemption: checkpoints are published to object storage while training
(:mod:`components.common.training.checkpoints`); a restarted stage resumes from the last complete
one, and a stage restarted after training reuses the finished model instead of training again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, model_validator

from components.common import hardware, storage
from components.common.config import ConfigError
from components.common.logs import setup_logging
from components.common.processes import environ_snapshot
from components.common.training import checkpoints
from components.common.training.settings import LaunchConfig, TrainerSettings

log = logging.getLogger(__name__)

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
#: DeepSpeed config file of each launch strategy ("auto" values are filled by the HF Trainer).
DEEPSPEED_CONFIGS = {"zero2": DEEPSPEED_DIR / "zero2.json", "zero3": DEEPSPEED_DIR / "zero3.json"}
JOB_FILE = "job.json"


# ----------------------------------------------------------------------------------------------
# Hardware pre-flight and launch planning
# ----------------------------------------------------------------------------------------------


def visible_gpus() -> int:
    """GPUs torch can use, after checking that the node's NVIDIA driver can run the image's CUDA
    libraries: with a too-old driver torch sees no GPU at all, and the first error would be a
    misleading one (bf16 refused for want of a GPU), not the driver's."""
    import torch

    hardware.check_driver(hardware.node_gpus())
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
    cmd += ["-m", "components.common.training.launch", str(job_path)]
    return cmd


# ----------------------------------------------------------------------------------------------
# The job handed to the training processes
# ----------------------------------------------------------------------------------------------


class TrainJob(BaseModel):
    """Everything a training process needs; written as JSON next to the data it points to.

    ``payload`` is the engine's own typed payload (``SFTPayload``, ``GRPOPayload``) as JSON; the
    engine named by ``entry`` validates it back into its class."""

    entry: str
    """``module:function`` called with this job in every training process."""
    stage: str
    payload: dict[str, Any]
    output_dir: str
    """Local folder of the Trainer's checkpoints."""
    final_dir: str
    """Local folder the trained model is saved to (by the main process)."""
    resume_from: str | None = None
    """Local checkpoint to resume from (restored from ``checkpoint_uri``)."""
    checkpoint_uri: str
    checkpoint_every: int
    keep_checkpoints: int
    async_checkpoint_upload: bool = True
    """Publish checkpoints in the background (``checkpoint.async_upload``)."""
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
        return Path(self.final_dir) / checkpoints.RESULT_FILE


def rendezvous_env(job: TrainJob, launch: LaunchConfig) -> dict[str, str]:
    """The torch.distributed variables of a single DeepSpeed process, which ``accelerate launch``
    leaves unset.

    With several processes accelerate starts them through torchrun, which sets RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR and MASTER_PORT. With one it runs the script as it is (accelerate
    1.15 ``prepare_simple_launcher_cmd_env``), so ``deepspeed.initialize`` (deepspeed 0.19
    ``comm.init_distributed``, ``auto_mpi_discovery=True``) finds them missing, falls back to MPI
    discovery and fails importing ``mpi4py``, which the image does not have. Set, they also make
    accelerate initialise DeepSpeed's process group itself (``PartialState``: LOCAL_RANK set and
    DeepSpeed in use). A single DDP process needs no process group: nothing is set for it.
    """
    if job.world_size != 1 or job.deepspeed is None:
        return {}
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(launch.main_process_port)}


def run_job(job: TrainJob, job_path: Path, launch: LaunchConfig, bf16: bool, gpu_ids: Sequence[int] = ()) -> dict:
    """Run the job in-process (CPU) or through ``accelerate launch`` on ``gpu_ids``; returns the
    main process's result (``final_dir/training_result.json``)."""
    job_path.write_text(job.model_dump_json(indent=1))
    if job.use_cpu:
        run_entry(job)
    else:
        cmd = launch_command(job_path, launch, job.world_size, bf16)
        env = dict(environ_snapshot(), CUDA_VISIBLE_DEVICES=hardware.cuda_visible_devices(gpu_ids),
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **rendezvous_env(job, launch))
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
    progress comes from periodic lines instead (``callbacks.ProgressLog``). Without a GPU, DeepSpeed
    (imported by the Trainer) is told it runs on the CPU rather than warning that it found no
    accelerator in every training process."""
    import datasets
    from transformers.utils import logging as hf_logging

    if visible_gpus() == 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def run_entry(job: TrainJob) -> None:
    quiet_progress_bars()
    module, _, func = job.entry.partition(":")
    getattr(importlib.import_module(module), func)(job)


def main(argv: list[str] | None = None) -> int:
    """``python -m components.common.training.launch JOB.json``: one training process (under accelerate)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m components.common.training.launch JOB.json", file=sys.stderr)
        return 2
    setup_logging()
    run_entry(TrainJob.model_validate_json(Path(args[0]).read_text()))
    return 0


# ----------------------------------------------------------------------------------------------
# The stage-side driver
# ----------------------------------------------------------------------------------------------


def run_training(*, stage: str, cfg: TrainerSettings, ctx: Any, tracker: Any, output: str,
                 input_digests: Mapping[str, str], entry: str, world: int, gpu_ids: Sequence[int],
                 prepare: Callable[[Path], tuple[BaseModel, dict[str, Any]]],
                 around: Callable[[BaseModel], contextlib.AbstractContextManager] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (resuming from published checkpoints, or reusing this job's finished model) and
    publish the model folder at ``output``; returns (stage stats, training result).

    ``prepare(work)`` writes the base model and data under ``work`` and returns the engine's
    payload and data stats; ``around(payload)`` wraps the training run (e.g. a vLLM server).
    ``ctx`` is the stage's StageContext, ``tracker`` its StageRun.
    """
    quiet_progress_bars()
    fingerprint = checkpoints.job_fingerprint(cfg, input_digests, ctx.seed, ctx.git_commit, ctx.cpu_kernels)
    uri = checkpoints.checkpoint_uri(cfg, ctx.cache_uri, stage, fingerprint)
    checkpoints.claim(uri, fingerprint, stage)
    work = checkpoints.work_dir(cfg, stage, fingerprint)
    final = work / checkpoints.FINAL
    stats: dict[str, Any] = {"checkpoint_uri": uri, "fingerprint": fingerprint, "world_size": world}
    start = time.monotonic()
    if checkpoints.fetch_final(uri, final):
        log.info("%s: %s already holds the trained model of this job; not training again", stage, uri)
        result = json.loads((final / checkpoints.RESULT_FILE).read_text())
        stats["reused_final"] = True
    else:
        payload, stats["data"] = prepare(work)
        resume = checkpoints.restore(uri, work / "checkpoints")
        gpu = bool(gpu_ids)
        job = TrainJob(
            entry=entry, stage=stage, payload=payload.model_dump(mode="json"), output_dir=str(work / "checkpoints"),
            final_dir=str(final), resume_from=str(resume) if resume else None, checkpoint_uri=uri,
            checkpoint_every=cfg.checkpoint.every_steps, keep_checkpoints=cfg.checkpoint.keep,
            async_checkpoint_upload=cfg.checkpoint.async_upload,
            world_size=world, use_cpu=not gpu,
            deepspeed=str(DEEPSPEED_CONFIGS[cfg.launch.strategy]) if gpu and cfg.launch.strategy in DEEPSPEED_CONFIGS
            else None,
            seed=ctx.seed, tracking_uri=ctx.tracking_uri, mlflow_run_id=tracker.run_id,
        )
        with (around(payload) if around else contextlib.nullcontext()):
            result = run_job(job, work / JOB_FILE, cfg.launch, cfg.bf16, gpu_ids)
        checkpoints.publish_final(final, uri)
    stats["model_digest"] = storage.copy(str(final), output)
    checkpoints.drop_all(uri)  # published: a retry reuses <uri>/final, the optimizer states can go
    if cfg.checkpoint.uri is None:
        checkpoints.prune_jobs(storage.join(ctx.cache_uri, "checkpoints", stage), cfg.checkpoint.cache_jobs)
    shutil.rmtree(work, ignore_errors=True)
    stats["stage_seconds"] = time.monotonic() - start
    stats["tokens_per_s"] = None if stats.get("reused_final") else training_tokens_per_s(result)
    return stats, result


#: Cumulative input tokens (non-padding) in the Trainer's log records, the first one a record
#: has: the Trainer's ``num_input_tokens_seen`` (kept in the trainer state, so it continues after
#: a resume; the SFT engine turns it on) and GRPOTrainer's ``num_tokens`` (the same state counter:
#: prompts + completions).
TOKEN_COUNT_KEYS = ("num_input_tokens_seen", "num_tokens")


def training_tokens_per_s(result: Mapping[str, Any]) -> float | None:
    """Training throughput of this run of the job: the non-padding tokens it processed (since
    the checkpoint it resumed from) per second of the Trainer's ``train_runtime``; None when the
    log has no token counts."""
    history = result.get("log_history", [])
    runtime = next((r["train_runtime"] for r in reversed(history) if "train_runtime" in r), None)
    counts = [(r.get("step", 0), float(r[key])) for r in history
              if (key := next((k for k in TOKEN_COUNT_KEYS if k in r), None))]
    if not runtime or not counts:
        return None
    resumed = result.get("resumed_from_step") or 0
    before = max((count for step, count in counts if step <= resumed and resumed), default=0.0)
    return (counts[-1][1] - before) / runtime


if __name__ == "__main__":
    sys.exit(main())
