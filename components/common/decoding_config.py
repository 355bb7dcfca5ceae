"""Settings of the shared decoders (:mod:`components.common.decoding`), kept free of torch so
that config modules (the pipeline's, the stages') can use them without loading an engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.config import Section

Mode = Literal["direct", "thinking"]


class VllmEngineSettings(Section):
    """vLLM engine settings (``engine: vllm``, GPU image only)."""

    gpu_memory_utilization: float = Field(0.8, gt=0, le=1)
    """Fraction of each GPU's memory vLLM may use (recipe: 0.8)."""
    max_model_len: int = Field(2048, ge=64)
    """Longest prompt + generation (recipe: 2048)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per model replica (the recipe's 1.7B model needs 1)."""
    enforce_eager: bool = False
    """Disable CUDA graphs (slower, less memory)."""


class DecoderSettings(Section):
    """How a model is decoded: engine, device, dtype, beam width, batch sizes, reasoning budget."""

    engine: Literal["transformers", "vllm"] = "transformers"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available, else CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Model weights dtype (auto: the checkpoint's)."""
    beam_width: int = Field(10, ge=1)
    """Beams of the constrained SID search = length of every ranked list."""
    batch_size: int = Field(8, ge=1)
    """transformers: prompts per constrained beam search batch (vLLM takes a whole shard)."""
    reasoning_batch_size: int = Field(4, ge=1)
    """transformers: prompts per greedy reasoning batch (vLLM takes a whole shard)."""
    max_reasoning_tokens: int = Field(1024, ge=1)
    """Most reasoning tokens before the think block is cut and closed."""
    vllm: VllmEngineSettings = Field(default_factory=VllmEngineSettings)
