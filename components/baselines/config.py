"""Config section ``baselines``: which classic recommenders are trained beside the model, and how.

SASRec's defaults are MiniOneRec's, the paper's baseline (RECIPE.md section 7.1): hidden size 32,
dropout 0.3, BCE with one negative item per position, Adam 1e-3; early stopping on the valid
split's NDCG@10. SASRec-CE (Klenitskiy & Vasilev, RecSys 2023) is the same network trained with
cross-entropy over the whole catalog, tuned on valid over a small grid.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section

Baseline = Literal["popularity", "sasrec", "sasrec_ce"]


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


class SasrecGrid(Section):
    """Values tried for SASRec-CE's settings; a setting left unset keeps the single value of
    ``baselines.sasrec_ce``. Every combination is trained."""

    hidden_size: list[int] | None = Field(None, min_length=1)
    dropout: list[float] | None = Field(None, min_length=1)
    learning_rate: list[float] | None = Field(None, min_length=1)

    @field_validator("hidden_size", "dropout", "learning_rate")
    @classmethod
    def _distinct(cls, value: list | None) -> list | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"must not repeat values (got {value})")
        return value

    def choices(self) -> list[dict[str, Any]]:
        """Every combination of the listed values, as setting -> value."""
        listed = {name: values for name, values in self.model_dump().items() if values is not None}
        return [dict(zip(listed, combo)) for combo in itertools.product(*listed.values())]


class SasrecCeConfig(SasrecConfig):
    """SASRec trained with cross-entropy over the whole item vocabulary at every position (no
    negatives; Klenitskiy & Vasilev, RecSys 2023), tuned on valid like the model: each setting of
    ``grid`` is trained with early stopping on valid NDCG@10, and the best one ranks (single
    thread; each epoch costs about a full-softmax pass over the catalog per train position)."""

    hidden_size: int = Field(64, ge=1)
    """Embedding and hidden size when the grid does not list it."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout rate when the grid does not list it."""
    learning_rate: float = Field(1e-3, gt=0)
    """Adam learning rate when the grid does not list it."""
    patience: int = Field(5, ge=0)
    """Stop a setting after this many epochs without a better valid NDCG@10 (cross-entropy
    converges in a few epochs)."""
    grid: SasrecGrid = Field(default_factory=lambda: SasrecGrid(hidden_size=[64, 128], dropout=[0.2, 0.5]))
    """The settings tried (default: hidden size 64 or 128 x dropout 0.2 or 0.5)."""

    @model_validator(mode="after")
    def _grid_heads(self) -> SasrecCeConfig:
        for hidden in self.grid.hidden_size or []:
            if hidden % self.num_heads:
                raise ValueError(f"num_heads {self.num_heads} must divide every grid.hidden_size (got {hidden})")
        return self

    def settings(self) -> list[SasrecConfig]:
        """One SASRec config per grid combination, in grid order."""
        base = self.model_dump(exclude={"grid"})
        return [SasrecConfig.model_validate({**base, **choice}) for choice in self.grid.choices()]


class BaselinesConfig(Section):
    """The baselines ranked on every valid and test row (evaluate scores the rows it evaluates)."""

    models: list[Baseline] = Field(default_factory=lambda: ["popularity", "sasrec"])
    """Baselines to train and rank; empty: no baselines step."""
    top_k: int = Field(50, ge=1)
    """Length of each ranked list (at least evaluate's beam width: its lists are cut to it)."""
    sasrec: SasrecConfig = Field(default_factory=SasrecConfig)
    """MiniOneRec's SASRec (BCE, one negative; RECIPE.md section 7.1)."""
    sasrec_ce: SasrecCeConfig = Field(default_factory=SasrecCeConfig)
    """SASRec with cross-entropy over the whole catalog, tuned on valid."""

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat entries (got {value})")
        return value
