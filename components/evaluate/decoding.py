"""Decoding the model under test: the two evaluation modes, two engines, and sharding.

* direct: ``render_prompt(direct_messages(history)) + EMPTY_THINK``, then the constrained beam
  search over SID tokens;
* thinking: ``render_prompt(reasoning_messages(history))``, greedy generation until
  ``</think>`` (at most ``max_reasoning_tokens``; an unclosed block is cut and closed, as the
  recipe does), then ``prompt + think_block(reasoning)`` goes to the constrained beam search.
  The prompts are :mod:`components.common.prompts`, the strings the training stages train on.

Engines: ``transformers`` (:func:`components.common.constrained.constrained_beam_search`,
prompt KV cache shared across beams) and ``vllm`` (GPU image: greedy reasoning by vLLM,
SID beams through the trie logits processor with prefix caching).

Sharding: with ``shards > 1`` the rows are cut into contiguous parts, one spawned process per
part, each on its own GPU (``cuda:i``; vLLM sees only its GPU), and merged back in order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import prompts
from components.common.constrained import RankedSids, SidTrie, constrained_beam_search, ensure_pad_token
from components.common.logs import Progress, setup_logging
from components.common.modeling import THINK_CLOSE, THINK_OPEN, load_causal_lm
from components.evaluate.config import EvaluateConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Decoded:
    """One evaluated row in one mode."""

    sids: list[str]
    scores: list[float]
    latency_s: float
    """Wall time of the row's share of its batch (reasoning + beam search)."""
    reasoning: str | None = None
    reasoning_closed: bool | None = None
    """Whether the model closed its think block itself (thinking mode)."""
    reasoning_tokens: int | None = None


def split_reasoning(generated: str) -> tuple[str, bool]:
    """The reasoning text of a greedy continuation of the reasoning prompt, and whether the
    model closed the think block: an opening ``<think>`` is dropped, the text is cut at
    ``</think>``."""
    text = generated.lstrip()
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    closed = THINK_CLOSE in text
    return text.split(THINK_CLOSE, 1)[0].strip(), closed


def resolve_device(cfg: EvaluateConfig, shard: int) -> torch.device:
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("evaluate.device is cuda but no CUDA device is visible")
    if shard >= torch.cuda.device_count():
        raise RuntimeError(f"shard {shard} needs cuda:{shard} but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", shard)


class TransformersDecoder:
    """The model through transformers: ``generate`` for reasoning, the KV-sharing trie beam search
    for SIDs."""

    def __init__(self, model_dir: str, catalog_sids: Sequence[str], cfg: EvaluateConfig, device: torch.device):
        kwargs = {} if cfg.dtype == "auto" else {"dtype": DTYPES[cfg.dtype]}
        self.model, self.tokenizer = load_causal_lm(model_dir, **kwargs)
        self.model.to(device).eval()
        ensure_pad_token(self.tokenizer)
        self.trie = SidTrie.from_tokenizer(self.tokenizer, catalog_sids).to(device)
        self.cfg, self.device = cfg, device
        close = self.tokenizer(THINK_CLOSE, add_special_tokens=False).input_ids
        self.stop = {"eos_token_id": [close[0], self.tokenizer.eos_token_id]} if len(close) == 1 else {
            "stop_strings": [THINK_CLOSE], "tokenizer": self.tokenizer, "eos_token_id": self.tokenizer.eos_token_id}

    @torch.inference_mode()
    def reason(self, texts: list[str]) -> list[tuple[str, bool, int]]:
        from transformers import GenerationConfig

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False).to(self.device)
        stop = dict(self.stop)
        tokenizer = stop.pop("tokenizer", None)
        config = GenerationConfig(do_sample=False, max_new_tokens=self.cfg.max_reasoning_tokens,
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
                                       num_beams=self.cfg.beam_width, batch_size=self.cfg.batch_size)


def vllm_engine_kwargs(model_dir: str, cfg: EvaluateConfig, seed: int) -> dict[str, Any]:
    """Arguments of ``vllm.LLM`` for evaluation: the trie logits processor, processed-logit
    log-probs (true model log-probs of the allowed tokens) and prefix caching."""
    from components.common.constrained_vllm import VLLM_PROCESSOR_FQCN

    return {
        "model": model_dir, "tokenizer": model_dir, "dtype": cfg.dtype, "seed": seed,
        "gpu_memory_utilization": cfg.vllm.gpu_memory_utilization, "max_model_len": cfg.vllm.max_model_len,
        "tensor_parallel_size": cfg.vllm.tensor_parallel_size, "enforce_eager": cfg.vllm.enforce_eager,
        "enable_prefix_caching": True, "logits_processors": [VLLM_PROCESSOR_FQCN],
        "logprobs_mode": "processed_logits", "max_logprobs": max(20, cfg.beam_width),
    }


class VllmDecoder:
    """The model through vLLM (GPU image): greedy reasoning and trie-constrained SID beams."""

    def __init__(self, model_dir: str, catalog_sids: Sequence[str], cfg: EvaluateConfig, workdir: Path, seed: int):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.trie = SidTrie.from_tokenizer(self.tokenizer, catalog_sids)
        self.trie_path = str(workdir / "sid_trie.pt")
        self.trie.save(self.trie_path)
        self.cfg = cfg
        self.llm = LLM(**vllm_engine_kwargs(model_dir, cfg, seed))

    def reason(self, texts: list[str]) -> list[tuple[str, bool, int]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.cfg.max_reasoning_tokens, stop=[THINK_CLOSE],
                                skip_special_tokens=True)
        results = []
        for output in self.llm.generate(texts, params, use_tqdm=False):
            completion = output.outputs[0]
            reasoning, closed = split_reasoning(completion.text)
            results.append((reasoning, closed or completion.stop_reason == THINK_CLOSE, len(completion.token_ids)))
        return results

    def beam(self, texts: list[str]) -> list[RankedSids]:
        from components.common.constrained_vllm import vllm_constrained_beam_search

        ids = [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        return vllm_constrained_beam_search(self.llm, ids, self.trie, self.trie_path, num_beams=self.cfg.beam_width)


def decode_mode(decoder: Any, histories: Sequence[Sequence[str]], mode: str, cfg: EvaluateConfig,
                label: str = "") -> list[Decoded]:
    """Decode every history (a list of SIDs) in ``mode``."""
    tokenizer = decoder.tokenizer
    chunk = cfg.reasoning_batch_size if mode == "thinking" else cfg.batch_size
    progress = Progress(log, f"evaluate {mode}{label}", total=len(histories), unit="rows")
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
    model_dir: str
    catalog_sids: list[str]
    histories: list[list[str]]
    modes: list[str]
    cfg_json: str
    seed: int
    workdir: str


def run_shard(job: ShardJob) -> dict[str, list[Decoded]]:
    """Decode one shard in every mode (the body of each shard process; also the 1-shard path)."""
    setup_logging()
    cfg = EvaluateConfig.model_validate_json(job.cfg_json)
    label = f" (shard {job.shard + 1}/{cfg.shards})" if cfg.shards > 1 else ""
    if cfg.engine == "vllm":
        if cfg.shards > 1:  # one GPU per shard process, chosen before vLLM initialises CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = str(job.shard)
        workdir = Path(job.workdir) / f"shard-{job.shard}"  # each engine process loads its own trie file
        workdir.mkdir(parents=True, exist_ok=True)
        decoder: Any = VllmDecoder(job.model_dir, job.catalog_sids, cfg, workdir, job.seed)
    else:
        torch.manual_seed(job.seed)
        decoder = TransformersDecoder(job.model_dir, job.catalog_sids, cfg, resolve_device(cfg, job.shard))
    return {mode: decode_mode(decoder, job.histories, mode, cfg, label) for mode in job.modes}


def decode_all(model_dir: str, catalog_sids: Sequence[str], histories: Sequence[Sequence[str]],
               cfg: EvaluateConfig, seed: int, workdir: Path) -> dict[str, list[Decoded]]:
    """Every mode's decoding of every history, sharded as configured, in row order."""
    parts = [p for p in np.array_split(np.arange(len(histories)), min(cfg.shards, len(histories))) if len(p)]
    jobs = [ShardJob(i, model_dir, list(catalog_sids), [list(histories[j]) for j in part], list(cfg.modes),
                     cfg.model_dump_json(), seed, str(workdir)) for i, part in enumerate(parts)]
    # vLLM does not reliably give its GPU memory back when an engine is dropped, and a scheduled
    # run decodes two models (its own and production) one after the other: so every vLLM
    # decoding runs in processes of its own, which release the memory when they exit.
    if len(jobs) == 1 and cfg.engine != "vllm":
        results = [run_shard(jobs[0])]
    else:
        log.info("decoding %d rows in %d shard process(es)", len(histories), len(jobs))
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_shard, jobs))
    return {mode: [d for result in results for d in result[mode]] for mode in cfg.modes}
