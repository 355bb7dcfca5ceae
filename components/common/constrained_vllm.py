"""The SID trie on GPU through vLLM 0.31: logits processors for both of vLLM's model runners and a
constrained beam search driven through ``LLM.generate``.

vLLM 0.31 has two GPU model runners with two incompatible logits-processor interfaces (paths in
the vllm 0.31.0 wheel):

* V1 (``vllm/v1/worker/gpu_model_runner.py``): ``vllm.v1.sample.logits_processor.LogitsProcessor``
  (``vllm/v1/sample/logits_processor/interface.py``): ``__init__(vllm_config, device,
  is_pin_memory)``, ``update_state(BatchUpdate)`` with added/removed/moved rows of the persistent
  batch, ``apply(logits)``; the loader (``vllm/v1/sample/logits_processor/__init__.py``) only
  accepts subclasses of it;
* V2 (``vllm/v1/worker/gpu/model_runner.py``):
  ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``
  (``vllm/v1/worker/gpu/sample/logits_processor/interface.py``): ``__init__(vllm_config,
  req_states)``, ``add_request(slot, params) -> bool``, ``apply(logits, ctx)``, request tokens read
  from the runner's ``req_states.all_token_ids``; its loader
  (``vllm/v1/worker/gpu/sample/logits_processor/loader.py``) raises for anything else.

``VllmConfig.use_v2_model_runner`` (``vllm/config/vllm.py``) decides which runner runs: the
``VLLM_USE_V2_MODEL_RUNNER`` environment variable when set, else V2 on CUDA with Triton (the GPU
image), V1 without Triton or for a few unsupported features. That default depends on the
environment, so :func:`trie_engine_kwargs` decides explicitly: it sets
``VLLM_USE_V2_MODEL_RUNNER=1`` (vLLM's own default on our GPU image) unless an operator already set
it, and returns the processor class of the runner so chosen. Both classes share one trie-walking
core (:func:`constrain_rows`); only the bookkeeping of which request sits in which logits row
differs.

vLLM is only in the GPU image (STACK.md section 1: the PyPI wheel is CUDA-only), so this module
imports without it: the processors then subclass ``object``, and the tests drive them through fakes
of both runners that follow the interfaces above.

How to use it (what ``components.common.decoding`` does with ``engine: vllm``)::

    trie.save(path)                                   # the engine process loads it by path
    llm = LLM(model=..., **trie_engine_kwargs(num_beams))
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
import os
from collections.abc import Callable, MutableMapping, Sequence
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

MODEL_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
"""vLLM's switch between its model runners (``vllm/envs.py``: unset, or an int read as a bool)."""
V1_PROCESSOR_FQCN = "components.common.constrained_vllm:SidTrieV1LogitsProcessor"
V2_PROCESSOR_FQCN = "components.common.constrained_vllm:SidTrieV2LogitsProcessor"

try:
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2LogitsProcessor
except ImportError:  # CPU machines: no vLLM; the classes below still implement the interfaces
    _V1LogitsProcessor = object  # type: ignore[assignment,misc]
    _V2LogitsProcessor = object  # type: ignore[assignment,misc]


# ----------------------------------------------------------------------------------------------
# Choosing the model runner, and the engine arguments
# ----------------------------------------------------------------------------------------------


def processor_for_runner(environ: MutableMapping[str, str] | None = None) -> str:
    """The processor FQCN for the model runner vLLM will use, after pinning that runner.

    ``VLLM_USE_V2_MODEL_RUNNER`` set by an operator is honoured (parsed as vLLM's
    ``envs.maybe_convert_bool`` does); unset, it is set to ``1``: the V2 runner, vLLM 0.31's choice
    on CUDA with Triton, chosen here rather than left to whatever the environment offers. The
    variable must be set before the engine is built: vLLM reads it when it builds its config, in
    this process and in the engine-core processes it starts, which inherit the environment.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(MODEL_RUNNER_ENV)
    if value is None:
        environ[MODEL_RUNNER_ENV] = "1"
        return V2_PROCESSOR_FQCN
    try:
        use_v2 = bool(int(value))
    except ValueError:
        raise ValueError(f"{MODEL_RUNNER_ENV}={value!r}: vLLM reads it as an integer (0: V1 model runner, "
                         "1: V2)") from None
    return V2_PROCESSOR_FQCN if use_v2 else V1_PROCESSOR_FQCN


def trie_engine_kwargs(num_beams: int, environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """``vllm.LLM`` arguments for trie-constrained decoding: the processor of the pinned model
    runner (:func:`processor_for_runner`), processed-logit log-probabilities (the model's true
    log-probs of the allowed tokens, which the beam search adds up), prefix caching, and enough
    returned log-probs for ``num_beams`` candidates."""
    return {"logits_processors": [processor_for_runner(environ)], "logprobs_mode": "processed_logits",
            "enable_prefix_caching": True, "max_logprobs": max(20, num_beams)}


# ----------------------------------------------------------------------------------------------
# Requests' constraints and the shared trie-walking core
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """What a request asked for in ``extra_args``."""

    trie_path: str
    start: int
    eos: int | None


def parse_constraint(params: Any) -> Constraint | None:
    """The constraint of a request's ``SamplingParams``, None when it does not opt in."""
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
    return Constraint(path, start, eos)


class TrieCache:
    """The tries requests name, loaded once per path onto the processor's device."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.tries: dict[str, SidTrie] = {}

    def __getitem__(self, path: str) -> SidTrie:
        if path not in self.tries:
            self.tries[path] = SidTrie.load(path, self.device)
            log.info("loaded SID trie %s (%d SIDs)", path, self.tries[path].num_sequences)
        return self.tries[path]


def constrain_rows(logits: torch.Tensor, rows: Sequence[int], trie: SidTrie, tokens: torch.Tensor,
                   lengths: Sequence[int], eos: Sequence[int | None]) -> None:
    """Write, in place, each of ``rows`` of ``logits`` as log-probabilities with every token the
    trie forbids at ``-inf``.

    ``tokens[r, :lengths[r]]`` are the SID tokens row ``r`` has emitted so far (``tokens`` is
    ``len(rows) x w`` with ``w >= min(max(lengths), depth)``; the rest is ignored). Below the SID
    length the trie's children are allowed; with a complete SID only ``eos[r]``, also once after
    it. The prefixes are walked for all rows at once and masked per length (at most ``depth + 1``
    vectorised groups, never a Python loop over rows for the mask). An unknown prefix, a SID
    continued without an EOS, or a row past SID + EOS raises :class:`UnknownPrefixError`.
    """
    longest = max(lengths)
    if longest > trie.depth + 1:
        raise UnknownPrefixError(f"a constrained request generated past its SID ({longest} tokens for a "
                                 f"{trie.depth}-token SID)")
    length = torch.tensor(list(lengths), device=trie.device)
    tokens = tokens.to(device=trie.device, dtype=torch.long)
    nodes = trie.root(len(rows))
    for d in range(min(longest, trie.depth)):
        active = length > d
        stepped = trie.advance(torch.where(active, nodes, -1), d, tokens[:, d])
        nodes = torch.where(active, stepped, nodes)
    index = torch.tensor(list(rows), device=logits.device)
    logprobs = torch.log_softmax(logits[index].float(), dim=-1)
    masked = torch.full_like(logprobs, NEG_INF)
    for depth in sorted(set(lengths)):
        group = torch.nonzero(length == depth).flatten()
        if depth < trie.depth:
            allowed = trie.allowed_mask(nodes[group], depth, logits.shape[-1]).to(logits.device)
        else:
            ends = [eos[int(g)] for g in group]
            emitted = tokens[group, trie.depth].tolist() if depth > trie.depth else ends
            if any(e is None for e in ends) or emitted != ends:
                raise UnknownPrefixError("a constrained request continued past its complete SID without an "
                                         f"EOS ({EXTRA_EOS} unset or not emitted)")
            allowed = torch.zeros(len(group), logits.shape[-1], dtype=torch.bool, device=logits.device)
            allowed[torch.arange(len(group)), torch.tensor(ends, device=logits.device)] = True
        group = group.to(logits.device)
        masked[group] = logprobs[group].masked_fill(~allowed, NEG_INF)
    logits[index] = masked.to(logits.dtype)


def _padded(prefixes: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Token lists as a ``len x width`` tensor (cut to ``width``; zeros after each list's end)."""
    out = torch.zeros(len(prefixes), max(1, width), dtype=torch.long)
    for r, prefix in enumerate(prefixes):
        kept = list(prefix[:width])
        out[r, : len(kept)] = torch.tensor(kept, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------------------------
# V1 model runner: rows of the persistent batch, told by update_state
# ----------------------------------------------------------------------------------------------


@dataclass
class _V1Row:
    constraint: Constraint
    prompt: list[int]
    output: list[int]  # vLLM's live list of this request's output tokens (appended in place)

    def prefix(self) -> list[int]:
        start = self.constraint.start
        if start >= len(self.prompt):
            return self.output[start - len(self.prompt):]
        return self.prompt[start:] + self.output


class SidTrieV1LogitsProcessor(_V1LogitsProcessor):
    """The trie processor for vLLM's V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``).

    Rows are requests of the persistent batch; vLLM adds, removes and moves them between steps
    (``update_state``), handing over each request's prompt and a live reference to its output
    token list; ``apply`` masks every constrained row through :func:`constrain_rows`.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.tries = TrieCache(device)
        self.rows: dict[int, _V1Row] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject malformed ``extra_args`` when the request is submitted."""
        parse_constraint(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes the argmax

    def update_state(self, batch_update: Any) -> None:
        """Track opted-in requests through vLLM's batch changes: added, then removed, then moved,
        as vLLM's own ``process_dict_updates`` (``vllm/v1/sample/logits_processor/builtin.py``)."""
        if not batch_update:
            return
        for index, params, prompt_ids, output_ids in batch_update.added:
            constraint = parse_constraint(params)
            if constraint is None:
                self.rows.pop(index, None)
                continue
            self.tries[constraint.trie_path]  # load now, not in the middle of a step
            self.rows[index] = _V1Row(constraint, list(prompt_ids or []), output_ids)
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None and getattr(direction, "name", str(direction)).upper().endswith("SWAP"):
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        by_trie: dict[str, list[int]] = {}
        for index in sorted(self.rows):
            by_trie.setdefault(self.rows[index].constraint.trie_path, []).append(index)
        for path, indices in by_trie.items():
            trie = self.tries[path]
            prefixes = [self.rows[i].prefix() for i in indices]
            constrain_rows(logits, indices, trie, _padded(prefixes, trie.depth + 1), [len(p) for p in prefixes],
                           [self.rows[i].constraint.eos for i in indices])
        return logits


# ----------------------------------------------------------------------------------------------
# V2 model runner: request slots, tokens read from the runner's request state
# ----------------------------------------------------------------------------------------------


class SidTrieV2LogitsProcessor(_V2LogitsProcessor):
    """The trie processor for vLLM's V2 model runner (the default on CUDA with Triton).

    Requests live in slots of the runner's request state; ``add_request`` is called when a request
    enters a slot (slots are recycled without a removal call, so it resets the slot) and
    ``apply(logits, ctx)`` receives the step's row -> slot mapping. A row's tokens so far are
    ``req_states.all_token_ids[slot, :seq_len]``, where ``seq_len`` (``ctx.seq_lens_upper_bound_np``,
    exact without speculative decoding) counts the tokens before the one being sampled; the SID
    part from the request's ``sid_start`` is gathered on the device and masked by
    :func:`constrain_rows`.

    Speculative decoding (several logits rows per request, draft tokens outside
    ``all_token_ids``) is refused when the engine is built.
    """

    def __init__(self, vllm_config: Any, req_states: Any):
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError("the SID trie logits processor does not support speculative decoding: build the "
                             "engine without speculative_config")
        self.req_states = req_states
        self.tries = TrieCache(req_states.device)
        self.slots: dict[int, Constraint] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject malformed ``extra_args`` when the request is admitted."""
        parse_constraint(sampling_params)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        constraint = parse_constraint(sampling_params)
        if constraint is None:
            self.slots.pop(req_idx, None)  # the slot's previous occupant may have been constrained
            return False
        self.tries[constraint.trie_path]  # load now, not in the middle of a step
        self.slots[req_idx] = constraint
        return True

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        slots = ctx.idx_mapping_np
        if logits.shape[0] != len(slots):
            raise ValueError(f"{logits.shape[0]} logits rows for {len(slots)} requests: the SID trie processor "
                             "expects one row per request (no speculative decoding)")
        by_trie: dict[str, list[tuple[int, int, int]]] = {}  # path -> (row, slot, SID tokens so far)
        for row, slot in enumerate(slots.tolist()):
            constraint = self.slots.get(slot)
            if constraint is None:
                continue
            emitted = int(ctx.seq_lens_upper_bound_np[row]) - constraint.start
            if emitted < 0:  # a prefill chunk ending before the SID: vLLM discards its sample
                continue
            by_trie.setdefault(constraint.trie_path, []).append((row, slot, emitted))
        all_token_ids = self.req_states.all_token_ids.gpu
        for path, entries in by_trie.items():
            trie = self.tries[path]
            rows, slot_ids, lengths = (list(column) for column in zip(*entries))
            width = min(max(lengths), trie.depth + 1)
            starts = torch.tensor([self.slots[s].start for s in slot_ids], dtype=torch.long)
            columns = (starts[:, None] + torch.arange(max(1, width))).clamp(max=all_token_ids.shape[1] - 1)
            tokens = all_token_ids[torch.tensor(slot_ids)[:, None].to(all_token_ids.device),
                                   columns.to(all_token_ids.device)]
            constrain_rows(logits, rows, trie, tokens, lengths, [self.slots[s].eos for s in slot_ids])
        return logits


# ----------------------------------------------------------------------------------------------
# Beam search through LLM.generate
# ----------------------------------------------------------------------------------------------


def vllm_constrained_beam_search(llm: Any, prompt_token_ids: Sequence[Sequence[int]], trie: SidTrie,
                                 trie_path: str, *, num_beams: int = 10,
                                 sampling_params: Callable[..., Any] | None = None) -> list[RankedSids]:
    """Beam search over catalog SIDs with a vLLM ``LLM`` built with :func:`trie_engine_kwargs`.

    Each of the ``depth`` steps sends every live beam of every prompt (prompt + beam prefix) in one
    ``generate`` call, as one-token requests asking for ``num_beams`` log-probabilities; the
    processor restricts them to the trie, so the returned candidates are exactly the valid
    continuations with their model log-probabilities. Per prompt the best ``num_beams`` extended
    beams are kept. Prefix caching shares each prompt's KV blocks across beams and steps.
    ``sampling_params`` is ``vllm.SamplingParams`` unless given (tests pass a stand-in).
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
