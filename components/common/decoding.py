"""Decoding a SID recommender: the two prompting modes on two engines, sharded over GPUs.

Shared by every consumer of a trained model (the evaluation stage; later a batch recommend stage
and the MLflow pyfunc): no stage imports another, so the engines live here with a settings object
of their own (:class:`~components.common.decoding_config.DecoderSettings`, importable without
torch so configs can embed it) that each consumer fills from its config.

Modes (the prompts are :mod:`components.common.prompts`, the strings the training stages train on):

* direct: ``render_prompt(direct_messages(history)) + EMPTY_THINK``, then the constrained beam
  search over SID tokens;
* thinking: ``render_prompt(reasoning_messages(history))``, greedy generation until ``</think>``
  (at most ``max_reasoning_tokens``; an unclosed block is cut and closed, as the recipe does), then
  ``prompt + think_block(reasoning)`` goes to the constrained beam search.

Engines: ``transformers`` (:class:`TransformersDecoder`: ``generate`` for the reasoning and the
KV-sharing trie beam search, ``reasoning_batch_size`` / ``batch_size`` prompts at a time) and
``vllm`` (:class:`VllmDecoder`, GPU image: every prompt of a shard in one ``generate`` call per step,
as vLLM schedules its own batches; SID beams through the trie logits processor with prefix
caching).

The modes (:func:`decode_mode`, :class:`Decoded`) and the transformers engine live in
:mod:`components.common.decoding_core`, free of vLLM (what the training processes' validation
imports, so that the training images do not get vLLM); this module re-exports them.

Sharding (:func:`decode_all`) is engine-level too: with ``shards > 1`` the rows are cut into
contiguous parts, one spawned process per part, each on its own GPU (``cuda:i``; vLLM sees only its
GPU), merged back in order; a vLLM engine always runs in a process of its own, because vLLM does
not reliably give its GPU memory back before its process exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common.constrained import RankedSids, SidTrie
from components.common.decoding_config import DecoderSettings, Mode
from components.common.decoding_core import Decoded, TransformersDecoder, decode_mode, split_reasoning
from components.common.hardware import cuda_visible_devices
from components.common.logs import setup_logging
from components.common.prompts import THINK_CLOSE

log = logging.getLogger(__name__)


def resolve_device(settings: DecoderSettings, shard: int) -> torch.device:
    wants_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device is cuda but no CUDA device is visible")
    if shard >= torch.cuda.device_count():
        raise RuntimeError(f"shard {shard} needs cuda:{shard} but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", shard)


def vllm_engine_kwargs(model_dir: str, settings: DecoderSettings, seed: int) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``: the model and the engine settings, plus the trie-decoding ones
    (:func:`components.common.constrained_vllm.trie_engine_kwargs`, which pins vLLM's model runner
    and names its logits processor)."""
    from components.common.constrained_vllm import trie_engine_kwargs

    engine = settings.vllm
    return {"model": model_dir, "tokenizer": model_dir, "dtype": settings.dtype, "seed": seed,
            "gpu_memory_utilization": engine.gpu_memory_utilization, "max_model_len": engine.max_model_len,
            "tensor_parallel_size": engine.tensor_parallel_size, "enforce_eager": engine.enforce_eager,
            **trie_engine_kwargs(settings.beam_width)}


class VllmDecoder:
    """The model through vLLM (GPU image): greedy reasoning and trie-constrained SID beams, every
    prompt handed to vLLM at once (it batches and schedules itself).

    ``llm`` and ``sampling_params`` default to ``vllm.LLM(**vllm_engine_kwargs(...))`` and
    ``vllm.SamplingParams``; tests pass stand-ins. ``trie`` defaults to the one of ``catalog_sids``
    under the model's tokenizer (a served model brings its own).
    """

    def __init__(self, model_dir: str, catalog_sids: Sequence[str], settings: DecoderSettings, workdir: Path,
                 seed: int, llm: Any = None, sampling_params: Callable[..., Any] | None = None,
                 trie: SidTrie | None = None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.trie = trie or SidTrie.from_tokenizer(self.tokenizer, catalog_sids)
        self.trie_path = str(workdir / "sid_trie.pt")
        self.trie.save(self.trie_path)  # the engine's logits processor loads it by path
        self.settings = settings
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params  # noqa: N813 (GPU image only)
        self.sampling_params = sampling_params
        if llm is None:
            from vllm import LLM

            llm = LLM(**vllm_engine_kwargs(model_dir, settings, seed))
        self.llm = llm

    def rows_per_call(self, mode: Mode) -> int | None:
        return None  # the whole shard

    def reason(self, texts: list[str]) -> list[tuple[str, bool, int]]:
        params = self.sampling_params(temperature=0.0, max_tokens=self.settings.max_reasoning_tokens,
                                      stop=[THINK_CLOSE], skip_special_tokens=True)
        results = []
        for output in self.llm.generate(texts, params, use_tqdm=False):
            completion = output.outputs[0]
            reasoning, closed = split_reasoning(completion.text)
            results.append((reasoning, closed or completion.stop_reason == THINK_CLOSE, len(completion.token_ids)))
        return results

    def beam(self, texts: list[str]) -> list[RankedSids]:
        from components.common.constrained_vllm import vllm_constrained_beam_search

        ids = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        return vllm_constrained_beam_search(self.llm, ids, self.trie, self.trie_path,
                                            num_beams=self.settings.beam_width, sampling_params=self.sampling_params)


@dataclass
class ShardJob:
    shard: int
    shards: int
    model_dir: str
    catalog_sids: list[str]
    histories: list[list[str]]
    modes: list[Mode]
    settings: DecoderSettings
    seed: int
    workdir: str


def run_shard(job: ShardJob) -> dict[str, list[Decoded]]:
    """Decode one shard in every mode (the body of each shard process; also the 1-shard path)."""
    setup_logging()
    label = f" (shard {job.shard + 1}/{job.shards})" if job.shards > 1 else ""
    if job.settings.engine == "vllm":
        if job.shards > 1:  # one GPU per shard process, chosen before vLLM initialises CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices([job.shard])  # of the parent's GPUs
        workdir = Path(job.workdir) / f"shard-{job.shard}"  # each engine process loads its own trie file
        workdir.mkdir(parents=True, exist_ok=True)
        decoder: Any = VllmDecoder(job.model_dir, job.catalog_sids, job.settings, workdir, job.seed)
    else:
        torch.manual_seed(job.seed)
        decoder = TransformersDecoder(job.model_dir, job.catalog_sids, job.settings,
                                      resolve_device(job.settings, job.shard))
    return {mode: decode_mode(decoder, job.histories, mode, label) for mode in job.modes}


def decode_all(model_dir: str, catalog_sids: Sequence[str], histories: Sequence[Sequence[str]],
               modes: Sequence[Mode], settings: DecoderSettings, *, shards: int, seed: int,
               workdir: Path) -> dict[str, list[Decoded]]:
    """Every mode's decoding of every history, in ``shards`` processes, in row order."""
    parts = [p for p in np.array_split(np.arange(len(histories)), min(shards, len(histories))) if len(p)]
    jobs = [ShardJob(i, len(parts), model_dir, list(catalog_sids), [list(histories[j]) for j in part], list(modes),
                     settings, seed, str(workdir)) for i, part in enumerate(parts)]
    # vLLM does not reliably give its GPU memory back when an engine is dropped, and a caller may
    # decode two models one after the other (evaluation: its own and production's): so every vLLM
    # decoding runs in processes of its own, which release the memory when they exit.
    if len(jobs) == 1 and settings.engine != "vllm":
        results = [run_shard(jobs[0])]
    else:
        log.info("decoding %d rows in %d shard process(es)", len(histories), len(jobs))
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_shard, jobs))
    return {mode: [d for result in results for d in result[mode]] for mode in modes}
