"""What the SFT and GRPO engines share inside the training processes: the HF training arguments
of the named settings, the saved model, and the result the stage process reads back."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common import artifacts, storage
from components.common.training import checkpoints
from components.common.training.launch import TrainJob
from components.common.training.settings import TrainerSettings


def training_arguments(settings: TrainerSettings, job: TrainJob, gradient_accumulation_steps: int) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig`` and ``GRPOConfig`` for ``settings`` and ``job``,
    then the section's ``trainer_args`` passthrough (validated against the engine's TRL class)."""
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
        **{"dataloader_num_workers": 0, **settings.trainer_args},
    )


def load_trained_model(path: str | Path) -> Any:
    """The model a training process trains, loaded in fp32 whether or not ``bf16`` is set.

    ``bf16: true`` means mixed precision, with fp32 master weights, under every launch strategy:

    * DDP (and one process): accelerate's bf16 autocast runs the forward and backward in bf16
      while the parameters, their gradients and AdamW's states stay in the dtype they were loaded
      in. Loaded in bf16 there would be no fp32 copy anywhere, and the recipe's updates (lr 5e-7
      for GRPO, 1e-5 for reasoning SFT) are far below bf16's resolution (8 significant bits: a
      weight of 0.02 moves in steps of ~8e-5), so most of them would round to nothing.
    * ZeRO-2/3: DeepSpeed casts the module's parameters to bf16 itself (the shipped configs'
      ``bf16.enabled: "auto"`` is the Trainer's ``bf16``; deepspeed 0.19
      ``engine._configure_distributed_model``) and keeps fp32 master partitions in its optimizer
      (``single_partition_of_fp32_groups`` in ZeRO-2, ``fp32_partitioned_groups_flat`` in ZeRO-3),
      whatever dtype the model was loaded in.

    Refusing ``ddp`` + ``bf16`` instead would also be safe, but DDP is the strategy of a model
    too small to shard, where fp32 masters cost little: 16 bytes per parameter with AdamW
    (27 GB for Qwen3-1.7B, which tests/gpu/test_memory_probe.py measures against 80 GB GPUs).
    """
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def numeric_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a Trainer log record."""
    return {k: float(v) for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def save_trained_model(trainer: Any, job: TrainJob, record: artifacts.ModelRecord, sid_vocab: list[str]) -> None:
    """The trained (best, when early stopping) model + tokenizer + generation config, its SID
    vocabulary and record, into ``job.final_dir``."""
    trainer.save_model(job.final_dir)  # gathers ZeRO-3 shards; the main process writes
    if trainer.is_world_process_zero():
        artifacts.write_model_record(job.final_dir, record, sid_vocab)


def keep_starting_model(trainer: Any, job: TrainJob, base_model: str, record: artifacts.ModelRecord,
                        sid_vocab: list[str]) -> None:
    """The model training started from, unchanged, into ``job.final_dir`` with this stage's
    record and SID vocabulary (as :func:`save_trained_model` writes trained weights); the base
    folder's publication manifest and the record of the run that trained it stay behind."""
    if trainer.is_world_process_zero():
        shutil.copytree(base_model, job.final_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(storage.MANIFEST, checkpoints.RESULT_FILE, "training_args.bin"))
        artifacts.write_model_record(job.final_dir, record, sid_vocab)


def resumed_step(job: TrainJob) -> int | None:
    """The global step of the checkpoint the job resumes from (None: a fresh start). Read before
    training: the checkpoint may be rotated away while training."""
    if not job.resume_from:
        return None
    return json.loads((Path(job.resume_from) / "trainer_state.json").read_text())["global_step"]


def write_result(job: TrainJob, trainer: Any, resumed_from: int | None, extra: Mapping[str, Any] | None = None) -> None:
    """Main process: the result file with the step counter, resume point and log history."""
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
