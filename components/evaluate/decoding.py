"""Evaluation's decoding: the ``evaluate`` config mapped onto the shared decoders.

The engines, the modes and the sharding over GPUs live in :mod:`components.common.decoding`
(every consumer of a trained model decodes the same way); this module only says how an
:class:`EvaluateConfig` chooses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.common import decoding
from components.common.decoding import Decoded
from components.common.decoding_config import DecoderSettings, Mode
from components.evaluate.config import EvaluateConfig


def decoder_settings(cfg: EvaluateConfig) -> DecoderSettings:
    """The decoder settings of an evaluation config."""
    return DecoderSettings(engine=cfg.engine, device=cfg.device, dtype=cfg.dtype, beam_width=cfg.beam_width,
                           batch_size=cfg.batch_size, reasoning_batch_size=cfg.reasoning_batch_size,
                           max_reasoning_tokens=cfg.max_reasoning_tokens,
                           vllm=cfg.vllm)


def decode_all(model_dir: str, catalog_sids: Sequence[str], histories: Sequence[Sequence[str]],
               cfg: EvaluateConfig, seed: int, workdir: Path,
               modes: Sequence[Mode] | None = None) -> dict[str, list[Decoded]]:
    """Every history decoded in each of ``modes`` (default: the configured ones), in
    ``cfg.shards`` processes, in row order."""
    return decoding.decode_all(model_dir, catalog_sids, histories, list(modes or cfg.modes), decoder_settings(cfg),
                               shards=cfg.shards, seed=seed, workdir=workdir)
