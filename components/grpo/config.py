"""Config section ``grpo``: Stage 2b, outcome-driven GRPO (RECIPE.md section 5).

Defaults are the recipe's: 16 rollouts per prompt, 256 prompts (4,096 rollouts) per optimizer
step with one update per generation batch (on-policy), clip 0.2, group-normalised advantages,
KL to the reference model as a loss with coefficient 0.001 (TRL's k3 estimator, the recipe's
``low_var_kl``), lr 5e-7 constant, weight decay 0.01, gradient checkpointing, temperature 1.0,
top-p 1, no top-k, prompts and responses up to 1,024 tokens, about 100 steps; reward = prefix
reward 0.25 / 0.5 / 1.0 + 0.1 for a real catalog SID. The second reward mode, ``beam_rank``
(trie-constrained beam rollouts with an exact-match rank reward), is the later SIDReasoner
code's (RECIPE.md section 11); it is selected with ``reward.mode``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section
from components.common.training import TrainerSettings


class RewardConfig(Section):
    """How a rollout is scored."""

    mode: Literal["prefix", "beam_rank"] = "prefix"
    """prefix: free sampling, scored by the recipe's rule on the SID after </think> (the
    matching prefix of the target SID, plus a bonus when the SID is a catalog item).
    beam_rank: sampled reasoning up to </think>, then a trie-constrained beam search of the SID
    conditioned on it; every beam is one completion of the group, scored by the exact-match rank
    reward (components/grpo/beam.py; RECIPE.md section 11)."""
    beam_width: int = Field(4, ge=1)
    """beam_rank: SID beams per sampled reasoning. A group of num_generations completions is
    num_generations / beam_width reasonings x beam_width beams, so it must divide
    num_generations. With beam_width = num_generations (one reasoning per prompt) the reasoning
    tokens get no policy gradient: every beam shares them and a group's advantages sum to 0."""
    rank_reward: Literal["ndcg", "top1"] = "ndcg"
    """beam_rank: reward of the beam whose SID is the target, by its 0-based rank r among its
    reasoning's beams (by summed log-probability): ndcg: 1 / log2(r + 2) (1, 0.63, 0.5, ...), the
    NDCG gain of one relevant item; top1: 1 at rank 0 only. Every other beam gets 0."""
    level_rewards: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0])
    """Reward when the first 1, 2, ... SID levels match the target (0 when the first does
    not); one value per SID level, non-decreasing."""
    catalog_bonus: float = Field(0.1, ge=0)
    """Added when the parsed SID is a real catalog item (the format/validity reward R_f)."""
    tail_chars: int = Field(50, ge=1)
    """Only the last this many characters of a completion are parsed (the recipe's rule)."""

    @field_validator("level_rewards")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value) or any(b < a for a, b in zip(value, value[1:])):
            raise ValueError(f"must be positive and non-decreasing, one per SID level (got {value})")
        return value


class RolloutConfig(Section):
    """Where rollouts are generated: vLLM on GPUs, HF generate otherwise (same trainer code)."""

    engine: Literal["auto", "hf", "vllm"] = "auto"
    """auto: vLLM when a GPU is visible, HF generate on a CPU."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """colocate: vLLM shares the training GPUs; server: a `trl vllm-serve` process on its own GPUs."""
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=0.95)
    """GPU memory share of vLLM (in colocate mode, of each training GPU)."""
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    """Tensor parallelism of vLLM."""
    vllm_server_base_url: str | None = None
    """Server mode: URL of an already running `trl vllm-serve`. Unset: the stage starts one on
    its first vllm_server_gpus GPUs and trains on the others."""
    vllm_server_gpus: int = Field(1, ge=1)
    """Server mode without a URL: GPUs given to the vLLM server."""
    vllm_server_port: int = Field(8000, ge=1024, le=65535)
    """Port of the server the stage starts."""
    vllm_server_timeout: float = Field(600.0, gt=0)
    """Seconds to wait for the server to come up."""
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
        if self.vllm_server_base_url is not None and self.vllm_mode != "server":
            raise ValueError("vllm_server_base_url: only used with vllm_mode 'server'")
        if self.engine == "hf" and self.vllm_mode == "server" and self.vllm_server_base_url is not None:
            raise ValueError("vllm_server_base_url: set, but engine is 'hf' (HF generate)")
        return self


class GRPOStageConfig(TrainerSettings):
    """Stage 2b: GRPO from the reasoning-activated model (RECIPE.md section 5)."""

    learning_rate: float = Field(5e-7, gt=0, le=1.0)
    """AdamW learning rate (recipe: 5e-7)."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "constant"
    """Learning-rate schedule (recipe: constant, no warmup)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (recipe: 0.01)."""
    num_train_epochs: float = Field(10.0, gt=0)
    """Epochs over the prompts when max_steps is null (recipe: 10)."""
    max_steps: int | None = Field(100, ge=1)
    """Optimizer steps (the recipe's evaluated checkpoint is global_step_100)."""
    per_device_batch_size: int = Field(16, ge=1)
    """Rollouts (completions) per process per forward/backward micro-batch."""
    logging_steps: int = Field(1, ge=1)
    """Log every step: the per-step table needs each one."""
    num_generations: int = Field(16, ge=2)
    """Group size: rollouts per prompt."""
    rollout_batch_size: int = Field(4096, ge=2)
    """Rollouts per optimizer step (prompts per step x num_generations), generated at once;
    one optimizer step per generation batch."""
    beta: float = Field(0.001, ge=0)
    """KL coefficient of the KL-to-reference loss (k3 estimator); 0 loads no reference model."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    """TRL loss aggregation."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """PPO clip range."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage normalisation: by the group's reward std (the recipe), the batch's, or none."""
    mask_truncated_completions: bool = False
    """Exclude completions cut at max_completion_length from the loss (free sampling; beam_rank
    completions always end with EOS, a reasoning cut at its budget being closed by the rollout)."""
    max_prompts: int | None = Field(None, ge=1)
    """Cap on training prompts (a seeded sample); null: every reasoning row."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """How rollouts are scored."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """How and where rollouts are generated."""

    @model_validator(mode="after")
    def _batches(self) -> GRPOStageConfig:
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by the group size "
                             f"num_generations ({self.num_generations}): every prompt gets a full group")
        if self.rollout_batch_size % self.per_device_batch_size:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"per_device_batch_size ({self.per_device_batch_size})")
        return self

    @model_validator(mode="after")
    def _beam_rollouts(self) -> GRPOStageConfig:
        if self.reward.mode != "beam_rank":
            return self
        if self.num_generations % self.reward.beam_width:
            raise ValueError(f"reward.beam_width ({self.reward.beam_width}) must divide the group size "
                             f"num_generations ({self.num_generations}): a group is reasonings x beams")
        if self.rollout.engine != "hf" and self.rollout.vllm_mode == "server":
            raise ValueError("reward.mode beam_rank: the trie logits processor runs inside the rollout engine, "
                             "which a `trl vllm-serve` server does not load; use rollout.vllm_mode 'colocate' "
                             "(or engine 'hf')")
        if self.rollout.engine != "hf" and self.rollout.vllm_tensor_parallel_size > 1:
            raise ValueError("reward.mode beam_rank: each training process drives its own colocated vLLM engine; "
                             "rollout.vllm_tensor_parallel_size must be 1")
        return self

    @property
    def prompts_per_step(self) -> int:
        return self.rollout_batch_size // self.num_generations
