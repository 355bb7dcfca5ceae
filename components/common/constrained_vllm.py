"""The SID trie on GPU through vLLM (0.31, V1 engine): a batch-level logits processor and a
constrained beam search driven through ``LLM.generate``.

vLLM is only in the GPU image (STACK.md section 1: the PyPI wheel is CUDA-only), so this module
imports without it; the processor then subclasses ``object`` and the tests drive it through the
same batch-update protocol vLLM uses (``update_state`` with added/removed/moved rows, then
``apply`` on the batch logits).

How to use it (what ``components.evaluate`` does with ``engine: vllm``)::

    trie.save(path)                                   # the engine process loads it by path
    llm = LLM(model=..., logits_processors=[VLLM_PROCESSOR_FQCN], logprobs_mode="processed_logits",
              enable_prefix_caching=True, max_logprobs=num_beams)
    ranked = vllm_constrained_beam_search(llm, prompt_token_ids, trie, path, num_beams=10)

A request opts in through ``SamplingParams.extra_args``: ``{"sid_trie": path, "sid_start": n}``
constrains every token from position ``n`` of the request's prompt + output tokens; other
requests are untouched. For an opted-in row the processor writes the row's *log-probabilities*
with every forbidden token at ``-inf``; with ``logprobs_mode="processed_logits"`` vLLM then
returns the model's true log-probabilities of the allowed tokens, which the beam search adds up
(the same scores as :func:`components.common.constrained.constrained_beam_search`). Sampling and
greedy decoding are unaffected by the shift (log_softmax only subtracts a per-row constant).

Prompt reuse across beam steps comes from vLLM's automatic prefix caching: each step's requests
are the prompt plus a beam prefix, so the prompt's KV blocks are computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from components.common.constrained import NEG_INF, RankedSids, SidTrie, UnknownPrefixError

log = logging.getLogger(__name__)

EXTRA_TRIE = "sid_trie"
"""``SamplingParams.extra_args`` key: path of a :meth:`SidTrie.save` file."""
EXTRA_START = "sid_start"
"""``extra_args`` key: index in prompt + output tokens where the constrained SID starts."""
EXTRA_EOS = "sid_eos"
"""``extra_args`` key (optional): the only token allowed once the SID is complete."""

#: What to pass to ``LLM(logits_processors=[...])`` (loaded by name inside the engine process).
VLLM_PROCESSOR_FQCN = "components.common.constrained_vllm:SidTrieVllmLogitsProcessor"

try:
    from vllm.v1.sample.logits_processor import LogitsProcessor as _VllmLogitsProcessor
except ImportError:  # CPU machines: no vLLM; the class below still implements the protocol
    _VllmLogitsProcessor = object  # type: ignore[assignment,misc]


@dataclass
class _Row:
    trie_path: str
    start: int
    eos: int | None
    prompt: list[int]
    output: list[int]  # vLLM's live list of this request's output tokens (appended in place)

    def prefix(self) -> list[int]:
        if self.start >= len(self.prompt):
            return self.output[self.start - len(self.prompt):]
        return self.prompt[self.start:] + self.output


def _constraint(params: Any) -> tuple[str, int, int | None] | None:
    """(trie path, start, eos) of a request's ``extra_args``, None when it does not opt in."""
    extra = getattr(params, "extra_args", None) or {}
    if EXTRA_TRIE not in extra:
        return None
    path, start, eos = extra[EXTRA_TRIE], extra.get(EXTRA_START), extra.get(EXTRA_EOS)
    if not isinstance(path, str) or not path:
        raise ValueError(f"extra_args[{EXTRA_TRIE!r}] must be the path of a saved SID trie (got {path!r})")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValueError(f"extra_args[{EXTRA_START!r}] must be a non-negative int (got {start!r})")
    if eos is not None and (not isinstance(eos, int) or isinstance(eos, bool) or eos < 0):
        raise ValueError(f"extra_args[{EXTRA_EOS!r}] must be a token id (got {eos!r})")
    return path, start, eos


class SidTrieVllmLogitsProcessor(_VllmLogitsProcessor):
    """Batch-level vLLM V1 logits processor constraining opted-in requests to catalog SIDs.

    Rows are requests of the persistent batch; vLLM adds, removes and moves them between steps
    (``update_state``), and ``apply`` masks all constrained rows of the batch: the prefixes are
    walked through the trie and masked per depth (at most ``depth + 1`` vectorised groups,
    never a loop over rows for the mask). An unknown prefix raises
    :class:`~components.common.constrained.UnknownPrefixError`.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.device = torch.device(device)
        self.rows: dict[int, _Row] = {}
        self.tries: dict[str, SidTrie] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject malformed ``extra_args`` when the request is submitted."""
        _constraint(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes the argmax

    def trie(self, path: str) -> SidTrie:
        if path not in self.tries:
            self.tries[path] = SidTrie.load(path, self.device)
            log.info("loaded SID trie %s (%d SIDs)", path, self.tries[path].num_sequences)
        return self.tries[path]

    def update_state(self, batch_update: Any) -> None:
        """Track opted-in requests through vLLM's batch changes (added, removed, then moved, the
        order of vLLM's own ``process_dict_updates``)."""
        if not batch_update:
            return
        for index, params, prompt_ids, output_ids in batch_update.added:
            constraint = _constraint(params)
            if constraint is None:
                self.rows.pop(index, None)
                continue
            path, start, eos = constraint
            self.trie(path)
            self.rows[index] = _Row(path, start, eos, list(prompt_ids or []), output_ids)
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None and getattr(direction, "name", str(direction)).upper().endswith("SWAP"):
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        by_trie: dict[str, list[int]] = {}
        for index, row in self.rows.items():
            by_trie.setdefault(row.trie_path, []).append(index)
        for path, indices in by_trie.items():
            self._apply_trie(logits, self.trie(path), sorted(indices))
        return logits

    def _apply_trie(self, logits: torch.Tensor, trie: SidTrie, indices: list[int]) -> None:
        prefixes = [self.rows[i].prefix() for i in indices]
        lengths = torch.tensor([len(p) for p in prefixes], device=self.device)
        if int(lengths.max()) > trie.depth + 1:
            raise UnknownPrefixError(f"a constrained request generated past its SID ({int(lengths.max())} tokens "
                                     f"for a {trie.depth}-token SID)")
        walked = max(1, min(int(lengths.max()), trie.depth))
        padded = torch.zeros(len(indices), walked, dtype=torch.long)
        for r, prefix in enumerate(prefixes):  # copies the token lists vLLM hands over, no masking here
            padded[r, : min(len(prefix), walked)] = torch.tensor(prefix[:walked], dtype=torch.long)
        padded = padded.to(self.device)
        nodes = trie.root(len(indices))
        for d in range(min(int(lengths.max()), trie.depth)):
            active = lengths > d
            stepped = trie.advance(torch.where(active, nodes, -1), d, padded[:, d])
            nodes = torch.where(active, stepped, nodes)
        rows = torch.tensor(indices, device=logits.device)
        logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
        masked = torch.full_like(logprobs, NEG_INF)
        for depth in sorted(set(lengths.tolist())):  # at most depth + 1 groups
            group = torch.nonzero(lengths == depth).flatten()
            if depth < trie.depth:
                allowed = trie.allowed_mask(nodes[group], depth, logits.shape[-1]).to(logits.device)
            else:
                eos = [self.rows[indices[int(g)]].eos for g in group]
                if any(e is None for e in eos) or (depth > trie.depth and any(
                        prefixes[int(g)][trie.depth] != self.rows[indices[int(g)]].eos for g in group)):
                    raise UnknownPrefixError("a constrained request continued past its complete SID without "
                                             f"an EOS ({EXTRA_EOS} unset or not emitted)")
                allowed = torch.zeros(len(group), logits.shape[-1], dtype=torch.bool, device=logits.device)
                allowed[torch.arange(len(group)), torch.tensor(eos, device=logits.device)] = True
            group_dev = group.to(logits.device)
            masked[group_dev] = logprobs[group_dev].masked_fill(~allowed, NEG_INF)
        logits[rows] = masked.to(logits.dtype)


def vllm_constrained_beam_search(llm: Any, prompt_token_ids: Sequence[Sequence[int]], trie: SidTrie,
                                 trie_path: str, *, num_beams: int = 10,
                                 sampling_params: Callable[..., Any] | None = None) -> list[RankedSids]:
    """Beam search over catalog SIDs with a vLLM ``LLM`` built with :data:`VLLM_PROCESSOR_FQCN`
    and ``logprobs_mode="processed_logits"``.

    Each of the ``depth`` steps sends every live beam (prompt + beam prefix) as a one-token
    request asking for ``num_beams`` log-probabilities; the processor restricts them to the
    trie, so the returned candidates are exactly the valid continuations with their model
    log-probabilities. Per prompt the best ``num_beams`` extended beams are kept. Prefix
    caching shares each prompt's KV blocks across beams and steps. ``sampling_params`` is
    ``vllm.SamplingParams`` unless given (tests pass a stand-in).
    """
    if sampling_params is None:
        from vllm import SamplingParams as sampling_params  # noqa: N813 (GPU image only)
    beams: list[list[tuple[float, list[int]]]] = [[(0.0, [])] for _ in prompt_token_ids]
    for _depth in range(trie.depth):
        requests, owners = [], []
        for p, (prompt, prompt_beams) in enumerate(zip(prompt_token_ids, beams)):
            params = sampling_params(max_tokens=1, temperature=1.0, top_p=1.0, top_k=-1, logprobs=num_beams,
                                     extra_args={EXTRA_TRIE: trie_path, EXTRA_START: len(prompt)})
            for score, prefix in prompt_beams:
                requests.append(({"prompt_token_ids": list(prompt) + prefix}, params))
                owners.append((p, score, prefix))
        outputs = llm.generate([r for r, _ in requests], [p for _, p in requests], use_tqdm=False)
        candidates: list[list[tuple[float, list[int]]]] = [[] for _ in prompt_token_ids]
        for (p, score, prefix), output in zip(owners, outputs):
            top = output.outputs[0].logprobs[0]
            for token, entry in top.items():
                value = float(getattr(entry, "logprob", entry))
                if value > NEG_INF:
                    candidates[p].append((score + value, prefix + [int(token)]))
        beams = [sorted(c, key=lambda item: -item[0])[:num_beams] for c in candidates]
    results = []
    for prompt_beams in beams:
        ids = torch.tensor([prefix for _, prefix in prompt_beams], dtype=torch.long).reshape(-1, trie.depth)
        leaves = trie.walk(ids.to(trie.device)) if len(ids) else torch.empty(0, dtype=torch.long)
        results.append(RankedSids(sids=[s for s in trie.label_of(leaves)], scores=[s for s, _ in prompt_beams],
                                  token_ids=ids))
    return results
