"""Supervised fine-tuning with TRL's SFTTrainer, shared by alignment (Stage 1) and reasoning
activation (Stage 2a).

:func:`run_sft` is the stage-side driver (prepare base model and data, train or resume, publish
the model, stats and MLflow model); :func:`train_sft` is the training-process entry point.

The datasets are pre-tokenized (``input_ids`` + ``completion_mask``, see ``data.py``); with
``completion_only_loss=True`` TRL 1.16 builds the labels from the mask during dataset
preparation (``SFTTrainer._prepare_dataset``: -100 where the mask is 0). The examples are
already cut to ``max_length`` (keeping the end), so TRL's truncation is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from components.align_sft.config import SFTSettings
from components.align_sft.data import Encoded
from components.common import training
from components.common.lineage import StageRun
from components.common.stage import StageContext

log = logging.getLogger(__name__)

ENTRY = "components.align_sft.sft:train_sft"


def settings_of(cfg: SFTSettings) -> SFTSettings:
    """The shared SFT settings of a stage section (which adds its own fields)."""
    return SFTSettings.model_validate(cfg.model_dump(include=set(SFTSettings.model_fields)))


def run_sft(*, stage: str, cfg: SFTSettings, ctx: StageContext, tracker: StageRun, output: str,
            input_digests: Mapping[str, str], prepare_base: Callable[[Path], dict[str, Any]],
            encode: Callable[[Any], tuple[Encoded, Encoded | None]], sid_vocab: list[str],
            gpus: int) -> dict[str, Any]:
    """Train (or resume, or reuse a finished run of the same job) and publish ``output``.

    ``prepare_base(dir)`` writes the starting model into ``dir`` and returns extra payload
    (e.g. ``new_token_ids``); ``encode(tokenizer)`` returns the (train, eval) examples.
    Returns the stage stats.
    """
    world = training.world_size(cfg, gpus)
    accumulation = training.gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                                  world, f"{stage}.global_batch_size")

    def prepare(work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        from transformers import AutoTokenizer

        base = work / "base"
        extra = prepare_base(base)
        train, evaluation = encode(AutoTokenizer.from_pretrained(base))
        for name, encoded in (("training", train), ("evaluation", evaluation)):
            if encoded is not None and encoded.truncated:
                log.warning("%s: %d of %d %s examples are longer than max_length=%d and lose their start",
                            stage, sum(encoded.truncated.values()), sum(encoded.rows.values()), name, cfg.max_length)
        train.dataset().save_to_disk(str(work / "train"))
        if evaluation is not None:
            evaluation.dataset().save_to_disk(str(work / "eval"))
        payload = {"settings": settings_of(cfg).model_dump(mode="json"), "base_model": str(base),
                   "train_data": str(work / "train"),
                   "eval_data": str(work / "eval") if evaluation is not None else None,
                   "gradient_accumulation_steps": accumulation, "sid_vocab": sid_vocab, **extra}
        return payload, {"train": train.stats(), "eval": evaluation.stats() if evaluation else None}

    stats, result = training.run_training(
        stage=stage, cfg=cfg, ctx=ctx, tracker=tracker, output=output, input_digests=input_digests, entry=ENTRY,
        world=world, gpu_ids=list(range(world)) if gpus else [], prepare=prepare)
    stats.update(summarize(result))
    return stats


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """Stage stats from the training result: steps, losses, throughput, resume point."""
    history = result.get("log_history", [])
    train_losses = [r["loss"] for r in history if "loss" in r]
    eval_losses = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    runtime = next((r["train_runtime"] for r in reversed(history) if "train_runtime" in r), None)
    tokens = result.get("num_input_tokens_seen") or 0
    return {
        "global_step": result["global_step"],
        "resumed_from_step": result.get("resumed_from_step"),
        "epoch": result.get("epoch"),
        "first_train_loss": train_losses[0] if train_losses else None,
        "last_train_loss": train_losses[-1] if train_losses else None,
        "eval_losses": eval_losses,
        "best_eval_loss": result.get("best_metric"),
        "best_global_step": result.get("best_global_step"),
        "train_tokens": tokens,
        "train_runtime_s": runtime,
        "train_tokens_per_s": tokens / runtime if runtime and tokens else None,
    }


# ----------------------------------------------------------------------------------------------
# Training process
# ----------------------------------------------------------------------------------------------


def train_sft(job: training.TrainJob) -> None:
    """Entry point of each training process: SFTTrainer on the prepared data, then save."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    from components.common.trainer_callbacks import NewTokenWarmup, standard_callbacks

    payload = job.payload
    cfg = SFTSettings.model_validate(payload["settings"])
    tokenizer = AutoTokenizer.from_pretrained(payload["base_model"])
    model = AutoModelForCausalLM.from_pretrained(payload["base_model"],
                                                 dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    train = load_from_disk(payload["train_data"])
    evaluation = load_from_disk(payload["eval_data"]) if payload.get("eval_data") else None
    evaluate = evaluation is not None and cfg.eval_strategy != "no"
    schedule = dict(eval_strategy=cfg.eval_strategy if evaluate else "no",
                    save_strategy=cfg.eval_strategy if evaluate else "no")
    if evaluate and cfg.eval_strategy == "steps":
        schedule.update(eval_steps=cfg.eval_steps, save_steps=cfg.eval_steps)
    args = SFTConfig(
        **training.training_arguments(cfg, job, payload["gradient_accumulation_steps"]),
        **schedule,
        load_best_model_at_end=evaluate and cfg.early_stopping_patience is not None,
        metric_for_best_model="eval_loss", greater_is_better=False,
        completion_only_loss=True, max_length=None,
        packing=False, shuffle_dataset=False,  # the Trainer's seeded sampler shuffles every epoch
        include_num_input_tokens_seen="non_padding",
    )
    callbacks = standard_callbacks(job)
    if evaluate and cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if payload.get("new_token_warmup_steps"):
        callbacks.append(NewTokenWarmup(model, payload["new_token_ids"], payload["new_token_warmup_steps"]))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation if evaluate else None,
                         processing_class=tokenizer, callbacks=callbacks)
    resumed_from = training.resumed_step(job)  # read now: the checkpoint may be rotated away while training
    trainer.train(resume_from_checkpoint=job.resume_from)
    training.save_trained_model(trainer, job, payload["sid_vocab"])
    training.write_result(job, trainer, resumed_from)
