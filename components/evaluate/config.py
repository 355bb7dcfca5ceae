"""Config section ``evaluate``: decoding modes, beam width and K, engine and sharding.

Defaults are the paper's evaluation (RECIPE.md section 6): full-catalog trie-constrained beam
search with 10 beams, HR/NDCG at K in {1, 3, 5, 10}, greedy reasoning of at most 1,024 tokens in
thinking mode. The baselines beside the model are the ``baselines`` stage's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section
from components.common.decoding_config import Mode, VllmEngineSettings
from components.common.registry import PRODUCTION_MODEL

#: Names of the earlier stages' models in the metrics (``ablation``): alignment SFT and reasoning activation.
ALIGN_MODEL, REASON_MODEL = "align_sft", "reason_sft"
#: Names the metrics give to other models: the baselines', production's and the earlier stages'.
RESERVED_MODEL_NAMES = frozenset({"popularity", "sasrec", "sasrec_ce", PRODUCTION_MODEL, ALIGN_MODEL, REASON_MODEL})

#: K always reported, and the larger K reported when the beam is wide enough.
BASE_KS = (1, 3, 5, 10)
WIDE_KS = (20, 50)
MAX_BEAM_WIDTH = 50


class EvaluateConfig(Section):
    """How the model under test is decoded and scored, and the baselines beside it."""

    modes: list[Mode] = Field(default_factory=lambda: ["thinking", "direct"])
    """direct: empty think block then constrained beam search over SIDs; thinking: greedy
    reasoning until </think>, then the constrained beam search."""
    splits: list[Literal["valid", "test"]] = Field(default_factory=lambda: ["test"])
    """Sample splits evaluated (metrics per split, plus 'all' when there are several)."""
    beam_width: int = Field(10, ge=1, le=MAX_BEAM_WIDTH)
    """Beams of the constrained SID search = length of every ranked list (recipe: 10)."""
    ks: list[int] | None = None
    """Cut-offs of HR@K/NDCG@K. Unset: 1, 3, 5, 10, plus 20 and 50 when beam_width allows.
    Every K must be <= beam_width."""
    batch_size: int = Field(8, ge=1)
    """Prompts per constrained beam search batch (recipe: 8 direct)."""
    reasoning_batch_size: int = Field(4, ge=1)
    """Prompts per greedy reasoning batch in thinking mode (recipe: 4)."""
    max_reasoning_tokens: int = Field(1024, ge=1)
    """Most reasoning tokens before the think block is cut and closed (recipe: 1024)."""
    max_examples: int | None = Field(None, ge=1)
    """Evaluate a seeded random subset of this many rows per split (the same rows for every
    model); unset: all rows."""
    model_name: str = Field("sidreasoner", pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the model under test in the metrics' ``model`` column."""
    score_production: bool = True
    """In a scheduled retraining run that keeps the production run's SIDs, also decode the
    production model (the ``previous`` input) on the same rows, as model ``production``, so that
    promotion compares both models on this run's test rows rather than on scores measured on
    different rows."""
    ablation: bool = False
    """The paper's ablation in the run: also score the earlier stages' models on the same rows,
    each in the one mode it was trained for: alignment SFT (``align_sft``, direct) and reasoning
    activation (``reason_sft``, thinking), beside the model under test (GRPO, every mode); the
    report adds GRPO's reward and reasoning length per step."""
    comparison_ks: list[int] | None = None
    """K of the paired comparisons (HR@K and NDCG@K differences with bootstrap intervals: each
    stage vs the previous one, thinking vs direct, the model vs SASRec and SASRec-CE), among the
    reported K. Unset: 10 (the largest reported K when the beam is narrower)."""
    bootstrap_samples: int = Field(1000, ge=100)
    """Resamples of the paired bootstrap behind each comparison's 95% interval (seeded by
    ``run.seed``)."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Decoding engine: transformers (CPU or GPU) or vLLM (GPU image; batch-level trie logits
    processor, prefix caching)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available, else CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Model weights dtype (auto: the checkpoint's)."""
    shards: int = Field(1, ge=1, le=64)
    """Data-parallel shards: the rows are split into this many contiguous parts, each decoded
    by its own process on its own GPU (cuda:i), then merged in order. 1 on CPU."""
    vllm: VllmEngineSettings = Field(default_factory=VllmEngineSettings)
    """vLLM engine settings (``engine: vllm``, GPU image only)."""
    report_users: int = Field(6, ge=0)
    """Sample users shown in the HTML report."""

    @field_validator("modes", "splits")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat entries (got {value})")
        return value

    @field_validator("modes", "splits")
    @classmethod
    def _non_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.ks is not None:
            if not self.ks or any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
                raise ValueError(f"ks must be distinct positive cut-offs (got {self.ks})")
            if max(self.ks) > self.beam_width:
                raise ValueError(f"beam_width {self.beam_width} is below the largest K {max(self.ks)}: every "
                                 "ranked list has beam_width items, so HR@K above it is undefined")
        if self.comparison_ks is not None:
            if not self.comparison_ks or len(set(self.comparison_ks)) != len(self.comparison_ks):
                raise ValueError(f"comparison_ks must be distinct cut-offs (got {self.comparison_ks})")
            unreported = sorted(set(self.comparison_ks) - set(self.effective_ks()))
            if unreported:
                raise ValueError(f"comparison_ks {unreported} are not among the reported K {self.effective_ks()}")
        if self.model_name in RESERVED_MODEL_NAMES:
            raise ValueError(f"model_name {self.model_name!r} names another model of the metrics: choose a name "
                             f"other than {sorted(RESERVED_MODEL_NAMES)}")
        if self.engine == "vllm" and self.device == "cpu":
            raise ValueError("engine vllm runs on CUDA only: set device to cuda or auto")
        if self.shards > 1 and self.engine == "vllm" and self.vllm.tensor_parallel_size > 1:
            raise ValueError("shards > 1 with vllm.tensor_parallel_size > 1 is not supported: use one or the other")
        return self

    def effective_ks(self) -> list[int]:
        """The K reported, ascending."""
        if self.ks is not None:
            return sorted(self.ks)
        return [k for k in (*BASE_KS, *WIDE_KS) if k <= self.beam_width]

    def effective_comparison_ks(self) -> list[int]:
        """The K of the paired comparisons, ascending."""
        if self.comparison_ks is not None:
            return sorted(self.comparison_ks)
        reported = self.effective_ks()
        return [10] if 10 in reported else [max(reported)]
