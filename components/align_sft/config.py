"""Config section ``align_sft``: the backbone and Stage 1, SID-language alignment SFT.

Defaults are the recipe's (RECIPE.md section 3): lr 3e-4 AdamW, 20 warmup steps then linear
decay, global batch 1024, up to 10 epochs with evaluation every epoch, early stopping with
patience 3 on the valid-split loss and the best checkpoint kept, bf16, cutoff 1024 tokens
(keeping the last ones), labels on the answer only (the end-of-turn token not supervised).

The SFT settings are the training library's (:class:`components.common.training.settings.SFTSettings`).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from components.common.config import Section
from components.common.training.settings import SFTSettings


class TinyBackboneConfig(Section):
    """An offline, randomly initialised small Qwen3 with a tokenizer trained on the run's text."""

    vocab_size: int = Field(2000, ge=300, le=200_000)
    """BPE vocabulary size before the SID tokens are added."""
    hidden_size: int = Field(64, ge=8)
    """Model width."""
    intermediate_size: int = Field(128, ge=8)
    """MLP width."""
    num_layers: int = Field(2, ge=1)
    """Decoder layers."""
    num_heads: int = Field(4, ge=1)
    """Attention heads."""
    num_kv_heads: int = Field(2, ge=1)
    """Key/value heads (grouped-query attention)."""
    max_positions: int = Field(2048, ge=64)
    """Longest sequence the model accepts."""

    @model_validator(mode="after")
    def _shapes(self) -> TinyBackboneConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self


class ConfigBackboneConfig(Section):
    """A published architecture (Qwen3-1.7B's by default) at a smaller size, randomly
    initialised on the node, with a tokenizer trained on the run's text: no download, and the
    real model's attention layout, head size, norms and dtype (what GPU kernels, vLLM and
    DeepSpeed see). The size settings left null keep the architecture's values."""

    architecture: str = "qwen3-1.7b"
    """qwen3-1.7b (Qwen3-1.7B's published config.json, built in) or the URI of a model's
    config.json (local or gs://)."""
    vocab_size: int = Field(2000, ge=300, le=200_000)
    """BPE vocabulary size of the tokenizer before the SID tokens are added."""
    hidden_size: int | None = Field(None, ge=8)
    """Model width (Qwen3-1.7B: 2048)."""
    intermediate_size: int | None = Field(None, ge=8)
    """MLP width (6144)."""
    num_layers: int | None = Field(None, ge=1)
    """Decoder layers (28)."""
    num_heads: int | None = Field(None, ge=1)
    """Attention heads (16)."""
    num_kv_heads: int | None = Field(None, ge=1)
    """Key/value heads (8)."""
    head_dim: int | None = Field(None, ge=8)
    """Size of each head (128; heads x head_dim need not equal the width, as in Qwen3)."""
    max_positions: int | None = Field(None, ge=64)
    """Longest sequence the model accepts (40960)."""

    @model_validator(mode="after")
    def _shapes(self) -> ConfigBackboneConfig:
        if self.num_heads is not None and self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self


class BackboneConfig(Section):
    """The model alignment starts from: a saved HF causal LM, or one built offline (tiny, or a
    published architecture from its config)."""

    uri: str | None = None
    """save_pretrained folder of any HF causal LM, local or gs:// (production: Qwen3-1.7B)."""
    tiny: TinyBackboneConfig | None = None
    """Build a tiny backbone from the catalog and corpus text instead (runs with no hub)."""
    from_config: ConfigBackboneConfig | None = None
    """Build a randomly initialised model of a published architecture instead, with the tiny
    backbone's tokenizer (the GPU smoke profile: Qwen3's architecture at a small width)."""
    new_token_warmup_steps: int = Field(0, ge=0)
    """Train only the new SID token embedding rows for this many steps first (0: off, the
    recipe's default: everything is fully fine-tuned from the start)."""

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
        if sum(source is not None for source in (self.uri, self.tiny, self.from_config)) != 1:
            raise ValueError("set exactly one of uri (a saved model), tiny or from_config (build one offline)")
        return self


class AlignSFTConfig(SFTSettings):
    """Stage 1: SFT of the backbone on the alignment corpus (RECIPE.md section 3)."""

    learning_rate: float = Field(3e-4, gt=0, le=1.0)
    """Peak learning rate (AdamW), then linear decay (recipe: 3e-4)."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warmup steps (recipe: 20)."""
    num_train_epochs: float = Field(10.0, gt=0)
    """At most this many epochs; early stopping usually ends sooner (recipe: 10)."""
    backbone: BackboneConfig
    """The starting model."""
    tasks: list[str] | None = None
    """Corpus tasks to train on; null: every task in the corpus."""
    max_valid_samples: int | None = Field(None, ge=1)
    """Cap on the valid-split rows of the validation loss (a seeded sample); null: all."""

    @model_validator(mode="after")
    def _warmup(self) -> AlignSFTConfig:
        if self.backbone.new_token_warmup_steps and self.launch.strategy == "zero3":
            raise ValueError("backbone.new_token_warmup_steps: not supported with launch.strategy zero3 "
                             "(partitioned parameters); use zero2 or ddp")
        if self.tasks is not None and not self.tasks:
            raise ValueError("tasks: empty list; use null for every task")
        return self
