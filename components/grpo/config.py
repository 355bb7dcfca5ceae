"""Config section ``grpo``: Stage 2b, outcome-driven GRPO (RECIPE.md section 5).

Defaults are the recipe's: 16 rollouts per prompt, 256 prompts (4,096 rollouts) per optimizer
step with one update per generation batch (on-policy), clip 0.2, group-normalised advantages,
KL to the reference model as a loss with coefficient 0.001 (TRL's k3 estimator, the recipe's
``low_var_kl``: not multiplied by the importance ratio, ``kl_importance_correction``), lr 5e-7 constant, weight decay 0.01, gradient checkpointing, temperature 1.0,
top-p 1, no top-k, prompts and responses up to 1,024 tokens, about 100 steps; reward = prefix
reward 0.25 / 0.5 / 1.0 + 0.1 for a real catalog SID. The second reward mode, ``beam_rank``
(trie-constrained beam rollouts with an exact-match rank reward), is the later SIDReasoner
code's (RECIPE.md section 11); it is selected with ``reward.mode``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section
from components.common.training.settings import GRPOSettings


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
    train_sid: bool = True
    """beam_rank: whether the SID tokens the beam search chose are trained with the reasoning
    before them. False trains the reasoning alone: a reasoning whose beams rank the target high
    is pushed up, and the beams' SIDs, most of them plausible items the target is not, are not
    pushed down for missing it (their tokens get no gradient of their own; the weights they share
    with the reasoning still move). Needs several reasonings per group (beam_width below
    num_generations), else nothing is trained."""
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


class GRPOStageConfig(GRPOSettings):
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
    max_prompts: int | None = Field(None, ge=1)
    """Cap on training prompts (a seeded sample); null: every reasoning row."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """How rollouts are scored."""

    @model_validator(mode="after")
    def _beam_rollouts(self) -> GRPOStageConfig:
        if self.reward.mode != "beam_rank":
            if not self.reward.train_sid:
                raise ValueError("reward.train_sid false needs reward.mode beam_rank: in free sampling the SID "
                                 "is part of the sampled text")
            return self
        if self.num_generations % self.reward.beam_width:
            raise ValueError(f"reward.beam_width ({self.reward.beam_width}) must divide the group size "
                             f"num_generations ({self.num_generations}): a group is reasonings x beams")
        if not self.reward.train_sid and self.reward.beam_width == self.num_generations:
            raise ValueError(f"reward.train_sid false with beam_width = num_generations ({self.num_generations}) "
                             "leaves nothing to train: one reasoning per group gets no policy gradient, and the "
                             "SID tokens are masked out")
        if self.rollout.engine != "hf" and self.rollout.vllm_mode == "server":
            raise ValueError("reward.mode beam_rank: the trie logits processor runs inside the rollout engine, "
                             "which a `trl vllm-serve` server does not load; use rollout.vllm_mode 'colocate' "
                             "(or engine 'hf')")
        if self.rollout.engine != "hf" and self.rollout.vllm_tensor_parallel_size > 1:
            raise ValueError("reward.mode beam_rank: each training process drives its own colocated vLLM engine; "
                             "rollout.vllm_tensor_parallel_size must be 1")
        return self
