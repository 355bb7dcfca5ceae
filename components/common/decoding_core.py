"""The prompting modes and the transformers engine of :mod:`components.common.decoding`, kept
free of vLLM: code that decodes with transformers only (the training processes' validation of the
model being trained) imports this module, and its image does not get vLLM. ``decoding`` re-exports
everything here; read its docstring for the modes and engines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from components.common import prompts
from components.common.constrained import RankedSids, SidTrie, constrained_beam_search, ensure_pad_token
from components.common.decoding_config import DecoderSettings, Mode
from components.common.logs import Progress
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


class TransformersDecoder:
    """The model through transformers: ``generate`` for reasoning, the KV-sharing trie beam search
    for SIDs, a few prompts at a time."""

    def __init__(self, model_dir: str, catalog_sids: Sequence[str], settings: DecoderSettings, device: torch.device,
                 trie: SidTrie | None = None):
        kwargs = {} if settings.dtype == "auto" else {"dtype": DTYPES[settings.dtype]}
        model, tokenizer = load_causal_lm(model_dir, **kwargs)
        self._attach(model.to(device).eval(), tokenizer, catalog_sids, settings, device, trie)

    @classmethod
    def of_model(cls, model: Any, tokenizer: Any, catalog_sids: Sequence[str],
                 settings: DecoderSettings) -> TransformersDecoder:
        """A decoder of a model already in memory, on its device (the training processes' validation
        decodes the model being trained); the caller puts it in eval mode while decoding."""
        decoder = cls.__new__(cls)
        decoder._attach(model, tokenizer, catalog_sids, settings, model.device)
        return decoder

    def _attach(self, model: Any, tokenizer: Any, catalog_sids: Sequence[str], settings: DecoderSettings,
                device: torch.device, trie: SidTrie | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
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
