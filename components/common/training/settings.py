"""Config sections of the training library, shared by the training stages (each stage subclasses
one and sets the recipe's defaults): processes and checkpoints, the optimisation settings, and
those of the SFT and GRPO engines.

Every setting a stage names is a typed, documented field. Anything else TRL's config classes
accept (the optimizer, Adam's betas, scheduler kwargs, dataloader workers, ...) goes in
``trainer_args``, validated against the pinned TRL class of the engine (``SFTConfig`` /
``GRPOConfig``) so that a typo or a setting the section already names fails at validation, not
after hours on a GPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section

#: Training-argument names the library sets itself from named settings or the job (see
#: ``components.common.training.engine``); ``trainer_args`` may not set them.
MANAGED_ARGS: frozenset[str] = frozenset({
    "output_dir", "seed", "data_seed", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "max_grad_norm", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "bf16", "fp16", "use_cpu", "gradient_checkpointing", "deepspeed",
    "logging_steps", "logging_first_step", "report_to", "disable_tqdm", "save_only_model", "save_total_limit",
    "save_strategy", "save_steps", "eval_strategy", "eval_steps", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better",
    # SFT engine
    "label_smoothing_factor", "completion_only_loss", "max_length", "packing", "shuffle_dataset",
    "include_num_input_tokens_seen",
    # GRPO engine
    "steps_per_generation", "num_generations", "max_completion_length", "temperature", "top_p", "top_k",
    "beta", "loss_type", "epsilon", "scale_rewards", "num_iterations", "reward_weights",
    "mask_truncated_completions", "use_vllm", "vllm_mode", "vllm_importance_sampling_correction",
    "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_max_model_length", "vllm_server_base_url",
    "vllm_server_timeout", "log_completions", "use_bias_correction_kl", "num_generations_eval",
})


@functools.cache
def _argument_names(target: str) -> frozenset[str]:
    module, _, name = target.partition(":")
    return frozenset(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


class LaunchConfig(Section):
    """How the training processes are started on GPUs (a CPU run always trains in-process)."""

    num_processes: int | None = Field(None, ge=1, le=64)
    """Training processes, one per GPU. Unset: every visible GPU (minus GPUs given to a vLLM
    server). More than the visible GPUs is an error."""
    strategy: Literal["ddp", "zero2", "zero3"] = "zero2"
    """Data parallelism: plain DDP, or DeepSpeed ZeRO stage 2 / 3 (config files shipped in
    components/common/training/deepspeed/)."""
    main_process_port: int = Field(29500, ge=1024, le=65535)
    """Rendezvous port of the launched processes."""


class CheckpointConfig(Section):
    """Preemption-safe checkpoints, synced to object storage."""

    every_steps: int = Field(50, ge=1)
    """Write and publish a checkpoint every this many optimizer steps (plus the evaluation-time
    saves used by early stopping)."""
    uri: str | None = None
    """Where checkpoints are published (local path or gs://). Unset:
    <storage.cache_uri>/checkpoints/<stage>/<job>, the job being what the work is (config, input
    digests, seed, code version): the same command re-run after a kill resumes, and identical
    work re-run reuses its finished model."""
    cache_jobs: int = Field(3, ge=1)
    """Jobs of this stage kept in the cache (unset uri): older ones (their checkpoints and
    finished models) are deleted when a job finishes."""
    keep: int = Field(2, ge=1)
    """Published checkpoints kept (the newest ones, plus the best one when early stopping)."""
    async_upload: bool = True
    """Publish each checkpoint from a background thread of the main training process: training
    goes on while it uploads, and the next save (and the end of training) waits for it. False:
    every process waits at each save until its checkpoint is published."""
    local_dir: str | None = None
    """Local scratch folder for the base model, tokenized data and checkpoints. Unset: the
    system temp folder."""


class ValidationConfig(Section):
    """Validation by what evaluation measures: HR@k / NDCG@k of the trie-constrained decoder
    (``components/common/decoding.py``) on a seeded sample of the valid split, decoded with the
    model being trained, inside the training processes (each process decodes its share of the
    sample with the full weights, gathered under ZeRO-3; the counts are summed over processes)."""

    metric: Literal["ndcg", "hr"] = "ndcg"
    """What picks the best checkpoint (and what early stopping watches): NDCG@k or HR@k of the
    ranked SIDs (greater is better)."""
    k: int = Field(10, ge=1)
    """Cutoff of HR@k / NDCG@k (at most beam_width)."""
    mode: Literal["direct", "thinking"] = "direct"
    """direct: the SID beam after the empty think block; thinking: greedy reasoning until
    </think> (at most max_reasoning_tokens), then the SID beam, as evaluation does."""
    max_samples: int | None = Field(256, ge=1)
    """Valid-split rows decoded (a seeded sample); null: all of them."""
    beam_width: int = Field(10, ge=1)
    """Beams of the constrained SID search (evaluation: 10)."""
    batch_size: int = Field(8, ge=1)
    """Prompts per constrained beam search batch."""
    reasoning_batch_size: int = Field(4, ge=1)
    """Prompts per greedy reasoning batch (thinking mode)."""
    max_reasoning_tokens: int = Field(1024, ge=1)
    """Thinking mode: most reasoning tokens before the think block is cut and closed (recipe:
    1024; keep it at evaluation's setting so validation scores what evaluation will)."""

    @model_validator(mode="after")
    def _cutoff(self) -> ValidationConfig:
        if self.k > self.beam_width:
            raise ValueError(f"k ({self.k}) must be at most beam_width ({self.beam_width}): the ranked list has "
                             "beam_width SIDs")
        return self

    @property
    def ranks(self) -> bool:
        """Whether the validation decodes (False: the validation loss decides, SFT only)."""
        return self.metric != "loss"

    @property
    def best_metric_key(self) -> str:
        """The Trainer's ``metric_for_best_model``."""
        return "eval_loss" if self.metric == "loss" else f"eval_{self.metric}_at_{self.k}"


class SFTValidation(ValidationConfig):
    """Which SFT checkpoint is kept: the one with the best validation metric at an evaluation
    (eval_strategy / eval_steps); early stopping watches the same metric."""

    metric: Literal["loss", "ndcg", "hr"] = "loss"
    """loss: the validation loss (the recipe's choice; nothing is decoded); ndcg / hr: NDCG@k /
    HR@k of the constrained decoder on the valid sample (greater is better). The loss is
    computed at every evaluation either way."""


class GRPOValidation(ValidationConfig):
    """GRPO's periodic greedy validation (the recipe's, every 50 steps): thinking mode on the valid
    sample every every_steps steps; the best validated model is kept."""

    mode: Literal["direct", "thinking"] = "thinking"
    """thinking: greedy reasoning, then the SID beam (what GRPO trains); direct: the SID beam only."""
    every_steps: int | None = Field(50, ge=1)
    """Validate (and save a checkpoint) every this many optimizer steps and after the last one,
    and restore the best validated checkpoint at the end; null: no validation, the last weights
    are kept."""
    validate_start: bool = True
    """Also validate the model GRPO starts from (step 0, before the first update), and keep it
    as the stage's model when no later validation scores above it: RL that did not help on
    valid is not shipped. false: the best of GRPO's own validations is kept."""


class TrainerSettings(Section):
    """Optimisation settings shared by the SFT and GRPO engines (each stage sets its defaults)."""

    #: ``module:class`` of the HF/TRL config class ``trainer_args`` are checked against.
    ARGUMENTS_CLASS: ClassVar[str] = "transformers:TrainingArguments"

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
    trainer_args: dict[str, Any] = Field(default_factory=dict)
    """Any other argument of the engine's TRL config class (SFTConfig / GRPOConfig), passed as
    is: e.g. {optim: adamw_torch_fused, adam_beta2: 0.95, lr_scheduler_kwargs: {...},
    dataloader_num_workers: 4}. Names the section already has, or that the library sets, are
    refused."""

    @field_validator("trainer_args")
    @classmethod
    def _passthrough(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        names = _argument_names(cls.ARGUMENTS_CLASS)
        for key in value:
            if key in MANAGED_ARGS:
                raise ValueError(f"{key!r} is set by the training library from this section's own fields "
                                 f"(e.g. learning_rate, per_device_batch_size, bf16); set it there")
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{key!r} is not an argument of {cls.ARGUMENTS_CLASS.replace(':', '.')}{hint}")
        return value


class SFTSettings(TrainerSettings):
    """Supervised fine-tuning settings shared by alignment and reasoning activation."""

    ARGUMENTS_CLASS: ClassVar[str] = "trl:SFTConfig"

    global_batch_size: int = Field(1024, ge=1)
    """Sequences per optimizer step over all processes (per_device_batch_size x processes x
    gradient accumulation)."""
    max_length: int = Field(1024, ge=8)
    """Cutoff in tokens; longer sequences keep their last max_length tokens."""
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    """When the validation loss is computed (and an evaluation-time checkpoint saved)."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluation period in steps (eval_strategy=steps)."""
    early_stopping_patience: int | None = Field(3, ge=1)
    """Stop after this many evaluations without a better validation metric (validation.metric);
    the best checkpoint is restored at the end. Null: train to the end, keep the last weights."""
    supervise_end_token: bool = False
    """Include the end-of-turn token in the loss of chat rows."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy (transformers' ``label_smoothing_factor``): each
    supervised token's target keeps 1 - label_smoothing of its probability, the rest is spread
    evenly over the vocabulary. 0: the plain cross-entropy (the recipe's). TRL 1.16 deprecates the
    argument in SFTTrainer (to be removed in TRL 2.0) and, on GPUs (``loss_kernel: fused``), pays
    for it with a full-logits forward per step besides the fused one."""
    loss_kernel: Literal["auto", "fused", "logits"] = "auto"
    """How the loss is computed (the same loss either way: summed over the supervised tokens,
    divided by their count in the step). fused: TRL's fused LM-head kernel (no logits tensor, and
    per-step entropy / token-accuracy metrics; Triton on GPUs, a slow torch fallback elsewhere);
    logits: the model's own forward, its LM head on the supervised positions only (prompts and
    padding never reach the vocabulary); auto: fused on GPUs, logits on a CPU."""
    validation: SFTValidation = Field(default_factory=SFTValidation)
    """The metric that picks the kept checkpoint: the validation loss or HR/NDCG@k of the
    constrained decoder on the valid sample."""

    @model_validator(mode="after")
    def _eval(self) -> SFTSettings:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_steps: required when eval_strategy is 'steps'")
        if self.eval_strategy != "steps" and self.eval_steps is not None:
            raise ValueError(f"eval_steps: only used with eval_strategy 'steps' (got {self.eval_strategy!r})")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError("early_stopping_patience: needs evaluations (eval_strategy is 'no'); set it to null")
        if self.validation.ranks and self.eval_strategy == "no":
            raise ValueError(f"validation.metric: {self.validation.metric!r} is computed at evaluations, but "
                             "eval_strategy is 'no'; set eval_strategy (and eval_steps) or metric 'loss'")
        if self.global_batch_size % self.per_device_batch_size:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"per_device_batch_size ({self.per_device_batch_size})")
        return self


class VllmServerConfig(Section):
    """Rollouts from a ``trl vllm-serve`` server on GPUs of its own (``rollout.vllm_mode: server``).

    Its own settings, not the colocated engine's: the server has whole GPUs, and TRL 1.16's
    ``trl/scripts/vllm_serve.py`` supports tensor parallelism only for dense models such as
    Qwen3 (its ``data_parallel_size`` "for dense models, keep this at 1 ... will error out"), so
    the server's GPUs are its tensor-parallel group."""

    base_url: str | None = None
    """URL of an already running `trl vllm-serve`. Unset: the stage starts one on its first
    tensor_parallel_size GPUs and trains on the others."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs of the server the stage starts (one tensor-parallel group)."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=0.95)
    """Share of each server GPU vLLM takes (weights, activations, KV cache); nothing else runs
    there (TRL's vllm-serve default)."""
    port: int = Field(8000, ge=1024, le=65535)
    """Port of the server the stage starts."""
    timeout: float = Field(600.0, gt=0)
    """Seconds to wait for the server to come up."""


class RolloutConfig(Section):
    """Where GRPO rollouts are generated: vLLM on GPUs, HF generate otherwise (same trainer code)."""

    engine: Literal["auto", "hf", "vllm"] = "auto"
    """auto: vLLM when a GPU is visible, HF generate on a CPU."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """colocate: a vLLM engine in each training process, sharing its GPU; server: a
    `trl vllm-serve` process on GPUs of its own (settings: server)."""
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=0.95)
    """Colocate mode: share of each training GPU the colocated vLLM engine takes (the rest is
    the training's)."""
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    """Colocate mode: tensor parallelism of the colocated engines (must divide the training
    processes)."""
    server: VllmServerConfig = Field(default_factory=VllmServerConfig)
    """Server mode: the `trl vllm-serve` server."""
    hf_generation_batch_size: int = Field(64, ge=1)
    """engine hf: most sequences per HF ``generate`` call; a process's rollouts (rollout_batch_size
    / processes: 1,024 on 4 GPUs in the paper profiles) are generated in chunks of this many, so
    the KV cache stays bounded (Qwen3-1.7B: ~0.11 MB per token and sequence in bf16)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of rollouts (recipe: 1.0)."""
    top_p: float = Field(1.0, gt=0, le=1.0)
    """Nucleus sampling mass (recipe: 1, off)."""
    top_k: int = Field(0, ge=0)
    """0: no top-k filtering (the recipe's -1)."""
    max_prompt_length: int = Field(1024, ge=8)
    """Prompts longer than this (in tokens) are dropped, as in the recipe."""
    max_completion_length: int = Field(1024, ge=4)
    """Longest rollout in tokens (reasoning + SID)."""

    @model_validator(mode="after")
    def _server(self) -> RolloutConfig:
        if self.server != VllmServerConfig() and self.vllm_mode != "server":
            raise ValueError("server: only used with vllm_mode 'server'")
        if self.engine == "hf" and self.vllm_mode == "server" and self.server.base_url is not None:
            raise ValueError("server.base_url: set, but engine is 'hf' (HF generate)")
        return self


class GRPOSettings(TrainerSettings):
    """Settings of the GRPO engine (TRL's GRPOTrainer): groups, batches, loss and rollouts."""

    ARGUMENTS_CLASS: ClassVar[str] = "trl:GRPOConfig"

    num_generations: int = Field(16, ge=2)
    """Group size: rollouts per prompt."""
    rollout_batch_size: int = Field(4096, ge=2)
    """Rollouts per optimizer step (prompts per step x num_generations), generated at once;
    one optimizer step per generation batch."""
    beta: float = Field(0.001, ge=0)
    """KL coefficient of the KL-to-reference loss (k3 estimator); 0 loads no reference model."""
    kl_importance_correction: bool = False
    """Multiply the k3 KL term by the policy's importance ratio (TRL's use_bias_correction_kl, its
    default: DeepSeek-V3.2's unbiased reverse-KL gradient). Off: the recipe's ``low_var_kl``,
    the plain k3 term (the ratio also changes the gradient where its value is 1)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    """TRL loss aggregation."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """PPO clip range."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage normalisation: by the group's reward std (the recipe), the batch's, or none."""
    mask_truncated_completions: bool = False
    """Exclude completions cut at max_completion_length from the loss."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """How and where rollouts are generated."""
    validation: GRPOValidation = Field(default_factory=GRPOValidation)
    """Periodic greedy validation on the valid sample; the best validated model is kept."""

    @model_validator(mode="after")
    def _batches(self) -> GRPOSettings:
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by the group size "
                             f"num_generations ({self.num_generations}): every prompt gets a full group")
        if self.rollout_batch_size % self.per_device_batch_size:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"per_device_batch_size ({self.per_device_batch_size})")
        return self

    @property
    def prompts_per_step(self) -> int:
        return self.rollout_batch_size // self.num_generations


def settings_of(section: TrainerSettings, settings: type[TrainerSettings]) -> TrainerSettings:
    """The engine settings (``settings``) part of a stage's section, which adds its own fields."""
    return settings.model_validate(section.model_dump(include=set(settings.model_fields)))
