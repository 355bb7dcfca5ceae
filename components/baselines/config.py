"""Config section ``baselines``: which classic recommenders are trained beside the model, and how.

SASRec's defaults are MiniOneRec's, the paper's baseline (RECIPE.md section 7.1): hidden size 32,
dropout 0.3, BCE with one negative item per position, Adam 1e-3; early stopping on the valid
split's NDCG@10.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section

Baseline = Literal["popularity", "sasrec"]


class SasrecConfig(Section):
    """The SASRec baseline (a compact self-attentive sequential recommender), trained on the
    train split only."""

    hidden_size: int = Field(32, ge=1)
    """Embedding and hidden size (paper: 32)."""
    num_layers: int = Field(2, ge=1)
    """Self-attention blocks."""
    num_heads: int = Field(1, ge=1)
    """Attention heads (must divide hidden_size)."""
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    """Dropout rate (paper: 0.3)."""
    max_len: int = Field(10, ge=1)
    """Longest input sequence (the preprocessing's max history, 10 in the recipe)."""
    learning_rate: float = Field(1e-3, gt=0)
    """Adam learning rate (paper: 1e-3)."""
    batch_size: int = Field(128, ge=1)
    """Training sequences per step."""
    epochs: int = Field(200, ge=1)
    """Most training epochs."""
    patience: int = Field(20, ge=0)
    """Stop after this many epochs without a better valid-split NDCG@10 (0: never; the best
    epoch's weights are kept). Without valid rows every epoch runs. When ``evaluate.splits``
    includes valid, SASRec's valid-split metrics are therefore optimistic."""
    max_valid_rows: int = Field(2000, ge=1)
    """Valid-split rows scored after each epoch for early stopping."""

    @model_validator(mode="after")
    def _heads(self) -> SasrecConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        return self


class BaselinesConfig(Section):
    """The baselines ranked on every valid and test row (evaluate scores the rows it evaluates)."""

    models: list[Baseline] = Field(default_factory=lambda: ["popularity", "sasrec"])
    """Baselines to train and rank; empty: no baselines step."""
    top_k: int = Field(50, ge=1)
    """Length of each ranked list (at least evaluate's beam width: its lists are cut to it)."""
    sasrec: SasrecConfig = Field(default_factory=SasrecConfig)

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat entries (got {value})")
        return value
