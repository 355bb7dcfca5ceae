"""Where and how wide torch runs: device selection and CPU thread count."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when a GPU is visible, else cpu; ``cuda`` without a GPU is an error.

    On cuda, cuBLAS is asked for deterministic matmuls (same seed, same SIDs on GPU too); this
    takes effect when CUDA has not been initialised yet in the process, as in a pipeline task.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("sid_quantize: device cuda requested but no GPU is visible")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device(device)


@contextlib.contextmanager
def deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """On the CPU, run the block with torch's deterministic algorithms (restored afterwards).

    With more than one CPU thread, RQ-VAE training gave other codebooks, hence other SIDs, in every
    process from the same embeddings and seed (office-tiny, 2 threads: collision rates 0.440 and
    0.399 in two runs); with the deterministic implementations it gives, bit for bit, what one
    thread gives. CUDA keeps its own setting (:func:`resolve_device`): the flag would make ops
    without a deterministic CUDA kernel raise."""
    if device.type != "cpu":
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (unset: leave torch's default); restored
    afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
