"""The GRPO engine: TRL's GRPOTrainer on prompts with the stage's reward functions.

One optimizer step per generation batch (on-policy): ``steps_per_generation`` equals the gradient
accumulation that makes ``rollout_batch_size`` rollouts, so every rollout is used once, in the step
right after it was generated. Rollouts come from HF generate, a vLLM engine colocated with
training, or a ``trl vllm-serve`` server (``settings.rollout``).

The rewards are the stage's: the payload names a ``module:function`` that builds a
:class:`RewardSetup` in each training process (reward functions are plain functions, TRL-style;
a mode with its own rollouts also hands TRL a ``rollout_func`` and may need the vLLM engine built
its way, ``engine_setup``).
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from components.common import artifacts
from components.common.training.launch import TrainJob
from components.common.training.settings import GRPOSettings
from components.common.training.validation import ValidationSample

ENTRY = "components.common.training.grpo:train_grpo"


@dataclass(frozen=True)
class RewardSetup:
    """What a stage's rewards hand to GRPOTrainer."""

    funcs: list[Callable[..., list[float]]]
    weights: list[float]
    rollout_func: Callable[[list[str], Any], dict[str, Any]] | None = None
    """TRL's ``rollout_func`` when the rewards come with their own rollouts; None: TRL samples."""
    engine_setup: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)
    """Context held while GRPOTrainer is built (e.g. how the colocated vLLM engine is made)."""
    importance_sampling_correction: bool = True
    """TRL's vLLM importance-sampling correction (off for tokens no sampler chose)."""


class GRPOPayload(BaseModel):
    """What the GRPO training processes get (:attr:`TrainJob.payload`)."""

    settings: GRPOSettings
    base_model: str
    prompts: str
    """``save_to_disk`` dataset: ``prompt`` and the columns the reward functions read."""
    gradient_accumulation_steps: int
    use_vllm: bool
    vllm_server_url: str | None = None
    rewards: str
    """``module:function(args, tokenizer, settings, job, use_vllm) -> RewardSetup``."""
    reward_args: dict[str, Any] = Field(default_factory=dict)
    record: artifacts.ModelRecord
    sid_vocab: list[str]
    validation: ValidationSample | None = None
    """The valid sample of the periodic validation (``settings.validation.every_steps``)."""


def validation_schedule(settings: GRPOSettings, resuming: bool) -> dict[str, Any]:
    """GRPOConfig arguments of the periodic validation: an evaluation (:class:`GRPOValidationLoop`)
    and a checkpoint every ``every_steps`` steps, the best one restored at the end. The Trainer
    then tracks the best step, keeps its checkpoint through rotation and resumes, and loads it
    back after the last step. With ``validate_start`` the starting model is validated before the
    first step (``eval_on_start``; a resumed run finds that record in the restored log history)."""
    validation = settings.validation
    if validation.every_steps is None:
        return dict(save_strategy="no", eval_strategy="no")
    return dict(eval_strategy="steps", eval_steps=validation.every_steps, save_strategy="steps",
                save_steps=validation.every_steps, load_best_model_at_end=True,
                metric_for_best_model=validation.best_metric_key, greater_is_better=True,
                eval_on_start=validation.validate_start and not resuming,
                num_generations_eval=1)  # one greedy decoding per prompt (TRL checks eval batches by it)


def start_beats_training(log_history: Sequence[Mapping[str, Any]], settings: GRPOSettings,
                         best_metric: float | None) -> bool:
    """Whether no validation during training (the Trainer's best, which never counts the
    evaluation on start) scored above the starting model's (step 0): a tie keeps the start, as
    the Trainer keeps the first of equal checkpoints, and RL that did not beat it is not shipped."""
    if settings.validation.every_steps is None or not settings.validation.validate_start:
        return False
    key = settings.validation.best_metric_key
    start = next((r[key] for r in log_history if key in r and int(r["step"]) == 0), None)
    return start is not None and (best_metric is None or start >= best_metric)


def grpo_arguments(settings: GRPOSettings, job: TrainJob, accumulation: int, use_vllm: bool,
                   vllm_server_url: str | None, rewards: RewardSetup) -> dict[str, Any]:
    """GRPOConfig keyword arguments of ``settings`` (the shared Trainer ones included)."""
    from components.common.training.engine import training_arguments

    rollout = settings.rollout
    return dict(
        **training_arguments(settings, job, accumulation),
        steps_per_generation=accumulation,
        num_generations=settings.num_generations,
        max_completion_length=rollout.max_completion_length,
        temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
        beta=settings.beta, use_bias_correction_kl=settings.kl_importance_correction,
        loss_type=settings.loss_type, epsilon=settings.epsilon,
        scale_rewards=settings.scale_rewards, num_iterations=1, reward_weights=rewards.weights,
        mask_truncated_completions=settings.mask_truncated_completions,
        use_vllm=use_vllm, vllm_mode=rollout.vllm_mode,
        vllm_importance_sampling_correction=rewards.importance_sampling_correction,
        vllm_gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=rollout.vllm_tensor_parallel_size,
        vllm_max_model_length=rollout.max_prompt_length + rollout.max_completion_length,
        vllm_server_base_url=vllm_server_url, vllm_server_timeout=rollout.server.timeout,
        shuffle_dataset=True, log_completions=False, **validation_schedule(settings, job.resume_from is not None),
    )


def build_rewards(payload: GRPOPayload, tokenizer: Any, job: TrainJob) -> RewardSetup:
    module, _, function = payload.rewards.partition(":")
    factory = getattr(importlib.import_module(module), function)
    return factory(payload.reward_args, tokenizer, payload.settings, job, payload.use_vllm)


def train_grpo(job: TrainJob) -> None:
    """Entry point of each training process."""
    from datasets import Dataset, load_from_disk
    from transformers import AutoTokenizer
    from trl import GRPOConfig

    from components.common.training.callbacks import standard_callbacks, train_with_checkpoints
    from components.common.training.engine import (
        keep_starting_model,
        load_trained_model,
        resumed_step,
        save_trained_model,
        write_result,
    )
    from components.common.training.hf_generation import BoundedGenerationGRPOTrainer
    from components.common.training.validation import GRPOValidationLoop, SidValidator

    class ValidatingGRPOTrainer(GRPOValidationLoop, BoundedGenerationGRPOTrainer):
        """The GRPO trainer whose evaluations are the periodic ranking validation."""

    payload = GRPOPayload.model_validate(job.payload)
    settings = payload.settings
    tokenizer = AutoTokenizer.from_pretrained(payload.base_model)
    tokenizer.padding_side = "left"
    model = load_trained_model(payload.base_model)  # fp32 master weights; bf16 is the Trainer's mixed precision
    rewards = build_rewards(payload, tokenizer, job)
    args = GRPOConfig(**grpo_arguments(settings, job, payload.gradient_accumulation_steps, payload.use_vllm,
                                       payload.vllm_server_url, rewards))
    validating = settings.validation.every_steps is not None
    if validating and payload.validation is None:
        raise ValueError("validation.every_steps is set but the payload has no validation sample")
    with rewards.engine_setup(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")  # known: experimental in TRL 1.16
        trainer = (ValidatingGRPOTrainer if validating else BoundedGenerationGRPOTrainer)(
            model=model, reward_funcs=rewards.funcs, args=args, train_dataset=load_from_disk(payload.prompts),
            # the Trainer wants an eval set when it evaluates: the validation rows (ValidatingGRPOTrainer
            # decodes them itself)
            eval_dataset=Dataset.from_dict({"target_sid": payload.validation.targets}) if validating else None,
            processing_class=tokenizer, callbacks=standard_callbacks(job), rollout_func=rewards.rollout_func,
            hf_generation_batch_size=settings.rollout.hf_generation_batch_size)
    if validating:
        trainer.sid_validator = SidValidator(settings.validation, payload.validation, tokenizer)
    resumed_from = resumed_step(job)
    train_with_checkpoints(trainer, job)
    # every process reads the same summed validation counts, so all take the same branch
    kept_start = start_beats_training(trainer.state.log_history, settings, trainer.state.best_metric)
    if kept_start:
        keep_starting_model(trainer, job, payload.base_model, payload.record, payload.sid_vocab)
    else:
        save_trained_model(trainer, job, payload.record, payload.sid_vocab)
    write_result(job, trainer, resumed_from, extra={"kept_start": kept_start})
