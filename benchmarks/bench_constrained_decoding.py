"""Trie-constrained SID decoding: constrained vs unconstrained beam search, the vectorised mask vs
a per-beam Python prefix-dictionary processor, and time/memory per step from 10k to 1M items.

Setup (one process, same tiny model for every variant): the offline tiny Qwen3 backbone (2
layers, hidden 64) with the SID tokens of a 3-level 256-code quantizer, 10,000 random catalog
SIDs, 8 direct prompts x 50 beams = 400 beam rows, 3 decoding steps (one per SID level).

* ``generate_*``: transformers ``generate(num_beams=50, num_return_sequences=50)``, without a
  constraint, with our :class:`SidTrieLogitsProcessor`, with a per-beam Python prefix-dictionary
  processor (the kind common in open-source SID recommenders), and with transformers'
  ``prefix_allowed_tokens_fn`` over the same dictionary. Target: ours <= 1.2x unconstrained.
* ``kv_shared_beam_search_s``: our own beam search (prompt prefilled once, KV cache shared by
  the beams) over the same trie.
* ``mask_step``: one processor call on 400 rows at each SID depth, ours vs the prefix-dict one
  (target: >= 10x faster).
All variants run with one intra-op thread (see ``run``).

* ``scaling``: catalogs of 10k, 100k and 1M SIDs: trie build time and size, the mask step's
  time and its memory (peak and total bytes of the tensors the step allocates, tracked at the
  ATen dispatcher). Target: flat memory per step.
"""

from __future__ import annotations

import tempfile
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import LogitsProcessor, LogitsProcessorList

from benchmarks.harness import best_of
from components.common import modeling, prompts, sid
from components.common.constrained import SidTrie, SidTrieLogitsProcessor, constrained_beam_search
from components.common.training import backbone

CODEBOOKS = (256, 256, 256)
BATCH, BEAMS, CATALOG = 8, 50, 10_000
SCALES = (10_000, 100_000, 1_000_000)
TEXTS = ["Blue gel pen, fine point, 12-pack", "Copy paper, letter size, recycled",
         "Ring binder with clear view cover", "Desk organizer in bamboo"] * 25


class PrefixDictProcessor(LogitsProcessor):
    """The baseline: a Python dict from each generated prefix (tuple of ids) to its allowed next
    ids, looked up and applied row by row."""

    def __init__(self, allowed: dict[tuple[int, ...], list[int]], prompt_length: int):
        self.allowed, self.prompt_length = allowed, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            prefix = tuple(input_ids[row, self.prompt_length:].tolist())
            mask[row, self.allowed[prefix]] = 0.0
        return scores + mask


def prefix_dict(sequences: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    allowed: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences.tolist():
        for depth in range(len(seq)):
            allowed.setdefault(tuple(seq[:depth]), set()).add(seq[depth])
    return {prefix: sorted(tokens) for prefix, tokens in allowed.items()}


def random_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct random code tuples of the 3-level quantizer."""
    flat = rng.choice(int(np.prod(CODEBOOKS)), size=n, replace=False)
    return np.stack(np.unravel_index(flat, CODEBOOKS), axis=1)


class AllocationMeter(TorchDispatchMode):
    """Bytes of the tensors created by ATen ops inside the block: total and peak live."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.total = 0
        self.seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.seen or storage.nbytes() == 0:
                continue  # in-place result or a view of a tracked tensor
            self.seen.add(key)
            size = storage.nbytes()
            self.live += size
            self.total += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, key, size)
        return out


def build_model(root: Path):
    base = backbone.build_tiny_backbone(root / "base", TEXTS, vocab_size=400, seed=0)
    model, tok = modeling.load_causal_lm(base)
    tokens = sid.vocabulary(CODEBOOKS)
    backbone.add_sid_tokens(model, tok, tokens)
    ids = tok.convert_tokens_to_ids(tokens)
    with torch.no_grad():  # distinct SID embeddings, so beams have something to rank
        emb = model.get_input_embeddings().weight
        emb[ids] = torch.randn(len(ids), emb.shape[1], generator=torch.Generator().manual_seed(0)) * 0.5
    return model.eval(), tok


def run() -> dict:
    # One intra-op thread for every variant: the dev/CI machine has 2 cores shared by several
    # jobs, where OpenMP thread pools turn sub-millisecond ops into tens of milliseconds of
    # waiting, drowning what is being compared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run()
    finally:
        torch.set_num_threads(threads)


def _run() -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build_model(Path(tmp))
    sids = [sid.format_sid(c) for c in random_codes(CATALOG, rng)]
    trie = SidTrie.from_tokenizer(tok, sids)
    sequences = np.array([tok.convert_tokens_to_ids(sid.split_tokens(s)) for s in sids])
    allowed = prefix_dict(sequences)
    histories = [[sids[j] for j in rng.choice(CATALOG, size=int(rng.integers(5, 11)), replace=False)]
                 for _ in range(BATCH)]
    texts = [prompts.render_prompt(tok, prompts.direct_messages(h)) + prompts.EMPTY_THINK for h in histories]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_length = enc.input_ids.shape[1]
    gen = dict(num_beams=BEAMS, num_return_sequences=BEAMS, max_new_tokens=trie.depth, do_sample=False,
               length_penalty=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    @torch.inference_mode()
    def generate(**extra):
        return model.generate(**enc, **gen, **extra)

    def allowed_fn(batch_id: int, ids: torch.Tensor) -> list[int]:
        return allowed[tuple(ids[prompt_length:].tolist())]

    ours = LogitsProcessorList([SidTrieLogitsProcessor(trie, prompt_length)])
    dict_proc = LogitsProcessorList([PrefixDictProcessor(allowed, prompt_length)])
    generate()  # warm-up
    unconstrained_s, _ = best_of(generate)
    constrained_s, out = best_of(lambda: generate(logits_processor=ours))
    dict_s, _ = best_of(lambda: generate(logits_processor=dict_proc))
    allowed_fn_s, _ = best_of(lambda: generate(prefix_allowed_tokens_fn=allowed_fn))
    kv_s, ranked = best_of(lambda: constrained_beam_search(model, tok, texts, trie, num_beams=BEAMS, batch_size=BATCH))
    valid = set(sids)
    generated = tok.batch_decode(out[:, prompt_length:])
    assert all(g in valid for g in generated), "a constrained beam is not a catalog SID"
    assert all(len(r.sids) == BEAMS and set(r.sids) <= valid for r in ranked)

    # one processor call per depth on the 400 beam rows of the constrained search
    rows = out[:, : prompt_length + trie.depth]
    scores = torch.randn(rows.shape[0], len(tok))
    ours_step, dict_step = [], []
    for depth in range(trie.depth):
        ids = rows[:, : prompt_length + depth]
        t_ours, a = best_of(lambda: ours[0](ids, scores), repeat=5)
        t_dict, b = best_of(lambda: dict_proc[0](ids, scores), repeat=5)
        assert torch.equal(torch.isfinite(a), torch.isfinite(b)), "the two processors disagree"
        ours_step.append(t_ours)
        dict_step.append(t_dict)

    scaling = []
    rows_per_step = BATCH * BEAMS
    for n in SCALES:
        codes = random_codes(n, rng)
        base = len(tok) - sum(CODEBOOKS)
        seqs = codes + base + np.array([0, CODEBOOKS[0], CODEBOOKS[0] + CODEBOOKS[1]])
        began = time.perf_counter()
        big = SidTrie(seqs, len(tok))
        build_s = time.perf_counter() - began
        picks = torch.from_numpy(seqs[rng.choice(n, size=rows_per_step)])
        step_s, peak, total = [], [], []
        for depth in range(big.depth):
            prefixes = picks[:, :depth]
            logits = torch.randn(rows_per_step, len(tok))

            def step():
                return big.mask_scores(logits, big.walk(prefixes), depth)

            seconds, _ = best_of(step, repeat=5)
            meter = AllocationMeter()
            with meter:
                step()
            step_s.append(seconds)
            peak.append(meter.peak)
            total.append(meter.total)
        scaling.append({"items": n, "trie_build_s": round(build_s, 3), "trie_mb": round(big.nbytes / 2**20, 2),
                        "mask_step_ms": [round(s * 1000, 3) for s in step_s],
                        "step_peak_mb": [round(p / 2**20, 3) for p in peak],
                        "step_allocated_mb": [round(t / 2**20, 3) for t in total]})

    mean_ours, mean_dict = float(np.mean(ours_step)), float(np.mean(dict_step))
    return {
        "setup": {"catalog": CATALOG, "batch": BATCH, "beams": BEAMS, "rows_per_step": rows_per_step,
                  "vocab": len(tok), "steps": trie.depth, "threads": torch.get_num_threads()},
        "generate_unconstrained_s": unconstrained_s,
        "generate_trie_processor_s": constrained_s,
        "generate_prefix_dict_processor_s": dict_s,
        "generate_prefix_allowed_tokens_fn_s": allowed_fn_s,
        "kv_shared_beam_search_s": kv_s,
        "mask_step_ours_s": ours_step,
        "mask_step_prefix_dict_s": dict_step,
        "scaling": scaling,
        "summary": {
            "constrained_vs_unconstrained_generate_ratio": round(constrained_s / unconstrained_s, 3),
            "prefix_dict_vs_unconstrained_generate_ratio": round(dict_s / unconstrained_s, 3),
            "prefix_allowed_tokens_fn_vs_unconstrained_generate_ratio": round(allowed_fn_s / unconstrained_s, 3),
            "kv_shared_beam_search_vs_unconstrained_generate_ratio": round(kv_s / unconstrained_s, 3),
            "mask_step_ms_ours": round(mean_ours * 1000, 3),
            "mask_step_ms_prefix_dict": round(mean_dict * 1000, 3),
            "mask_step_speedup": round(mean_dict / mean_ours, 1),
            "step_peak_mb_10k_vs_1m": [max(scaling[0]["step_peak_mb"]), max(scaling[-1]["step_peak_mb"])],
            "mask_step_ms_10k_vs_1m": [round(float(np.mean(scaling[0]["mask_step_ms"])), 3),
                                       round(float(np.mean(scaling[-1]["mask_step_ms"])), 3)],
        },
    }
