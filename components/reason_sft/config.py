"""Config section ``reason_sft``: Stage 2a, cold-start reasoning activation (RECIPE.md section 4).

Defaults are the recipe's: start from the Stage-1 best model, lr 1e-5, 10 warmup steps, global
batch 1024 (micro-batch 8), up to 5 epochs with early stopping patience 5 on the evaluation
loss, cutoff 1024, bf16, full fine-tune, the whole assistant span supervised including the end
token. The evaluation loss is computed on a held-out share of the reasoning rows.
``validation.metric: ndcg`` (or ``hr``) picks the checkpoint by NDCG@k of thinking-mode decoding
(greedy reasoning, then the constrained SID beam) on a sample of the valid split instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.common.training.settings import SFTSettings, SFTValidation


class ReasoningValidation(SFTValidation):
    """As :class:`SFTValidation`, decoded in thinking mode by default (what this stage trains)."""

    mode: Literal["direct", "thinking"] = "thinking"
    """thinking: greedy reasoning until </think>, then the SID beam, as evaluation does; direct:
    the SID beam only."""


class ReasonSFTConfig(SFTSettings):
    """Stage 2a: SFT on ``<think>reasoning</think>`` + target SID, from the aligned model."""

    learning_rate: float = Field(1e-5, gt=0, le=1.0)
    """Peak learning rate (AdamW), then linear decay (recipe: 1e-5)."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup steps (recipe: 10)."""
    num_train_epochs: float = Field(5.0, gt=0)
    """At most this many epochs; early stopping usually ends sooner (recipe: 5)."""
    per_device_batch_size: int = Field(8, ge=1)
    """Micro-batch per process (recipe: 8 x 4 GPUs x 32 accumulation = 1024)."""
    early_stopping_patience: int | None = Field(5, ge=1)
    """Evaluations without a better loss before stopping (recipe: 5); null: off."""
    supervise_end_token: bool = True
    """The end-of-turn token is in the loss (recipe: mask_eos=False)."""
    eval_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of the reasoning rows held out (seeded) for the evaluation loss; 0 with
    eval_strategy 'no' trains on every row."""
    max_rows: int | None = Field(None, ge=1)
    """Cap on the training rows (a seeded sample); null: all."""
    direct_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """For this share of the training reasoning rows (a seeded sample), also train a direct-mode
    example of the same history and target: the direct prompt + empty think block, as evaluation
    and serving decode direct mode, then the target SID. Reasoning SFT on thinking rows alone makes
    the direct mode forget what alignment taught; every reasoning row is still trained. 0: off."""
    validation: ReasoningValidation = Field(default_factory=ReasoningValidation)
    """The metric that picks the kept checkpoint: the loss on the held-out reasoning rows (the
    recipe), or HR/NDCG@k of thinking-mode decoding on the valid sample (needs the samples input)."""

    @model_validator(mode="after")
    def _held_out(self) -> ReasonSFTConfig:
        if self.eval_fraction == 0 and self.eval_strategy != "no":
            raise ValueError("eval_fraction: 0 leaves nothing to evaluate; set eval_strategy 'no' "
                             "(and early_stopping_patience null) to train without evaluation")
        return self
