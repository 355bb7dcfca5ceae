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

Sharding (:func:`decode_all`) is engine-level too: with ``shards > 1`` the rows are cut into
contiguous parts, one spawned process per part, each on its own GPU (``cuda:i``; vLLM sees only its
GPU), merged back in order; a vLLM engine always runs in a process of its own, because vLLM does
not reliably give its GPU memory back before its process exits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import prompts
from components.common.constrained import RankedSids, SidTrie, constrained_beam_search, ensure_pad_token
from components.common.decoding_config import DecoderSettings, Mode
from components.common.hardware import cuda_visible_devices
from components.common.logs import Progress, setup_logging
from components.common.modeling import load_causal_lm
from components.common.prompts import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Decoded:
    """One decoded row in one mode."""

    sids: list[str]
    scores: list[float]
    latency_s: float
    """Wall time of the row's share of its batch (reasoning + beam search)."""
    reasoning: str | None = None
    reasoning_closed: bool | None = None
    """Whether the model closed its think block itself (thinking mode)."""
    reasoning_tokens: int | None = None


def split_reasoning(generated: str) -> tuple[str, bool]:
    """The reasoning of a greedy continuation of the reasoning prompt, and whether the model
    closed the think block. Parsed as Qwen3's chat template parses an assistant turn: the text
    before ``</think>`` and after the last ``<think>``, newlines around it dropped; so
    ``think_block`` of it rebuilds what the model wrote."""
    closed = THINK_CLOSE in generated
    reasoning = generated.split(THINK_CLOSE, 1)[0].rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
    return reasoning, closed


def resolve_device(settings: DecoderSettings, shard: int) -> torch.device:
    wants_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device is cuda but no CUDA device is visible")
    if shard >= torch.cuda.device_count():
        raise RuntimeError(f"shard {shard} needs cuda:{shard} but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", shard)


class TransformersDecoder:
    """The model through transformers: ``generate`` for reasoning, the KV-sharing trie beam search
    for SIDs, a few prompts at a time."""

    def __init__(self, model_dir: str, catalog_sids: Sequence[str], settings: DecoderSettings, device: torch.device,
                 trie: SidTrie | None = None):
        kwargs = {} if settings.dtype == "auto" else {"dtype": DTYPES[settings.dtype]}
        self.model, self.tokenizer = load_causal_lm(model_dir, **kwargs)
        self.model.to(device).eval()
        ensure_pad_token(self.tokenizer)
        # a served model brings its trie (built at promotion from this tokenizer and catalog)
        self.trie = (trie or SidTrie.from_tokenizer(self.tokenizer, catalog_sids)).to(device)
        self.settings, self.device = settings, device
        close = self.tokenizer(THINK_CLOSE, add_special_tokens=False).input_ids
        self.stop = {"eos_token_id": [close[0], self.tokenizer.eos_token_id]} if len(close) == 1 else {
            "stop_strings": [THINK_CLOSE], "tokenizer": self.tokenizer, "eos_token_id": self.tokenizer.eos_token_id}

    def rows_per_call(self, mode: Mode) -> int | None:
        return self.settings.reasoning_batch_size if mode == "thinking" else self.settings.batch_size

    @torch.inference_mode()
    def reason(self, texts: list[str]) -> list[tuple[str, bool, int]]:
        from transformers import GenerationConfig

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False).to(self.device)
        stop = dict(self.stop)
        tokenizer = stop.pop("tokenizer", None)
        config = GenerationConfig(do_sample=False, max_new_tokens=self.settings.max_reasoning_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id, **stop)
        out = self.model.generate(**enc, generation_config=config, tokenizer=tokenizer)
        new = out[:, enc.input_ids.shape[1]:]
        pad = self.tokenizer.pad_token_id
        results = []
        for row in new:
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            reasoning, closed = split_reasoning(text)
            results.append((reasoning, closed, int((row != pad).sum())))
        return results

    def beam(self, texts: list[str]) -> list[RankedSids]:
        return constrained_beam_search(self.model, self.tokenizer, texts, self.trie,
                                       num_beams=self.settings.beam_width, batch_size=self.settings.batch_size)


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


def decode_mode(decoder: Any, histories: Sequence[Sequence[str]], mode: Mode, label: str = "") -> list[Decoded]:
    """Decode every history (a list of SIDs) in ``mode``, ``decoder.rows_per_call(mode)`` rows per
    engine call (None: all of them)."""
    tokenizer = decoder.tokenizer
    chunk = decoder.rows_per_call(mode) or max(1, len(histories))
    progress = Progress(log, f"decode {mode}{label}", total=len(histories), unit="rows")
    out: list[Decoded] = []
    for start in range(0, len(histories), chunk):
        part = histories[start:start + chunk]
        began = time.perf_counter()
        if mode == "direct":
            texts = [prompts.render_prompt(tokenizer, prompts.direct_messages(h)) + prompts.EMPTY_THINK for h in part]
            thoughts: list[tuple[str | None, bool | None, int | None]] = [(None, None, None)] * len(part)
        else:
            bases = [prompts.render_prompt(tokenizer, prompts.reasoning_messages(h)) for h in part]
            thoughts = decoder.reason(bases)
            texts = [base + prompts.think_block(reasoning) for base, (reasoning, _, _) in zip(bases, thoughts)]
        ranked = decoder.beam(texts)
        latency = (time.perf_counter() - began) / len(part)
        out.extend(Decoded(r.sids, r.scores, latency, reasoning, closed, n_tokens)
                   for r, (reasoning, closed, n_tokens) in zip(ranked, thoughts))
        progress.update(len(part))
    progress.close()
    return out


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
