"""Trie-constrained decoding over Semantic IDs: one vectorised trie shared by evaluation and RL.

Every catalog SID is a fixed-length sequence of token ids (``<a_12><b_200><c_7>`` -> three ids,
the SID tokens being atomic added tokens, see :mod:`components.common.modeling`). The
:class:`SidTrie` stores those sequences as a level-by-level CSR tree of tensors:

* ``keys[d]``: sorted ``parent * vocab_size + token`` of every edge from depth ``d`` to ``d + 1``;
  the child's node id *is* the edge's position, so following an edge is one ``searchsorted``;
* ``ptr[d]``/``tokens[d]``: each depth-``d`` node's children as a CSR slice of ``tokens[d]``;
* ``max_degree[d]``: the widest node at that depth (at most the level's codebook size).

For a batch of ``R`` beam rows, the allowed-token mask of a step is built in one vectorised
operation: gather each row's child slice padded to ``max_degree[d]`` (an ``R x max_degree``
index), then scatter it into an ``R x V`` boolean mask. Nothing loops over rows or beams in
Python, and the temporary memory of a step is ``O(R * (max_degree + V))`` whatever the catalog
size (the trie itself grows with the catalog; a step does not).

Failing loudly is part of the contract: a prefix that is not in the trie raises
:class:`UnknownPrefixError`; decoding never falls back to unconstrained generation (the bug of
several open-source SID recommenders, RECIPE.md section 11).

Entry points:

* :meth:`SidTrie.from_tokenizer` builds the trie from a tokenizer and the catalog's SID strings
  (raising :class:`MissingSidTokensError` when the checkpoint lacks SID tokens);
* :class:`SidTrieLogitsProcessor` plugs the trie into ``transformers`` ``generate`` (greedy,
  sampling or ``num_beams``);
* :func:`constrained_beam_search` runs the SID beam search for a batch of prompt texts, prefilling
  each prompt once and sharing its KV cache across the beams, and returns the ranked SIDs with
  their log-probabilities (what evaluation consumes); :func:`constrained_beam_search_ids` does
  the same from token ids (what GRPO's beam rollouts consume: the prefix is sampled tokens);
* ``components.common.constrained_vllm`` wraps the same trie as logits processors for both of
  vLLM's model runners.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import sid as sid_codec
from components.common.errors import InputError

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


class UnknownPrefixError(ValueError):
    """A generated prefix is not the prefix of any catalog SID (never decoded unconstrained).

    ``row`` is the first offending row of the batch, when known."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


class MissingSidTokensError(InputError):
    """The tokenizer/checkpoint does not know some SID tokens of the catalog."""


class SidTrie:
    """All catalog SIDs as fixed-length token-id sequences, stored as tensors (see module doc).

    Nodes are numbered per depth: the root is node 0 of depth 0; the nodes of depth ``d + 1`` are
    the distinct length-``d + 1`` prefixes in lexicographic order, so the leaves (depth
    ``depth``) are the sorted sequences and :attr:`labels` maps a leaf to its SID string.
    A node id of ``-1`` marks a dead beam (no valid continuation): it allows nothing and
    advances to ``-1``.
    """

    def __init__(self, sequences: Any, vocab_size: int, labels: Sequence[str] | None = None,
                 token_names: Mapping[int, str] | None = None):
        seqs = np.asarray(sequences, dtype=np.int64)
        if seqs.ndim != 2 or seqs.shape[0] == 0 or seqs.shape[1] == 0:
            raise ValueError(f"a SID trie needs a non-empty (n_sids, length) array of token ids, got shape "
                             f"{seqs.shape}")
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive (got {vocab_size})")
        if seqs.min() < 0 or seqs.max() >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size}) (got {seqs.min()}..{seqs.max()})")
        labels = list(labels) if labels is not None else [str(list(row)) for row in seqs]
        if len(labels) != len(seqs):
            raise ValueError(f"{len(labels)} labels for {len(seqs)} sequences")
        n, length = seqs.shape
        order = np.lexsort(seqs.T[::-1])  # lexicographic: first column is the primary key
        ordered = seqs[order]
        changed = np.zeros(n, dtype=bool)  # row differs from the previous row in columns 0..d
        changed[0] = True
        dup = np.all(ordered[1:] == ordered[:-1], axis=1)
        if dup.any():
            first = int(np.flatnonzero(dup)[0])
            raise ValueError(f"duplicate SID sequences, e.g. {labels[order[first]]!r} and "
                             f"{labels[order[first + 1]]!r}: every catalog item needs its own SID")

        self.vocab_size, self.depth, self.num_sequences = int(vocab_size), int(length), int(n)
        self.labels = [labels[i] for i in order]
        self.token_names = dict(token_names or {})
        self.keys: list[torch.Tensor] = []
        self.ptr: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []
        self.max_degree: list[int] = []
        parent = np.zeros(n, dtype=np.int64)  # node id at depth d of each sorted row
        n_nodes = 1
        for d in range(length):
            if d == 0:
                diff = np.r_[True, ordered[1:, 0] != ordered[:-1, 0]]
            else:
                diff = np.r_[True, changed[1:] | (ordered[1:, d] != ordered[:-1, d])]
            changed = diff
            edge_rows = np.flatnonzero(diff)
            edge_parent, edge_token = parent[edge_rows], ordered[edge_rows, d]
            ptr = np.searchsorted(edge_parent, np.arange(n_nodes + 1))
            self.keys.append(torch.from_numpy(edge_parent * self.vocab_size + edge_token))
            self.ptr.append(torch.from_numpy(ptr))
            self.tokens.append(torch.from_numpy(edge_token.copy()))
            self.max_degree.append(int(np.diff(ptr).max()))
            parent = np.cumsum(diff) - 1
            n_nodes = len(edge_rows)
        self.device = torch.device("cpu")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, sids: Sequence[str]) -> SidTrie:
        """The trie of ``sids`` (SID strings) under ``tokenizer``'s vocabulary.

        Each SID token must be one token of the vocabulary (added as a normal token by
        :func:`components.common.training.backbone.add_sid_tokens`); otherwise
        :class:`MissingSidTokensError` lists the missing ones. SIDs must be distinct and of
        one length.
        """
        if not len(sids):
            raise ValueError("cannot build a SID trie from an empty catalog")
        split = [sid_codec.split_tokens(s) for s in sids]
        lengths = {len(toks) for toks in split}
        if len(lengths) != 1:
            raise ValueError(f"SIDs of different lengths {sorted(lengths)}: a catalog has one number of levels")
        distinct = sorted({tok for toks in split for tok in toks})
        ids = token_ids(tokenizer, distinct)
        table = dict(zip(distinct, ids))
        seqs = np.array([[table[tok] for tok in toks] for toks in split], dtype=np.int64)
        vocab = max(len(tokenizer), int(seqs.max()) + 1)
        return cls(seqs, vocab, labels=list(sids), token_names={i: t for t, i in table.items()})

    def to(self, device: str | torch.device) -> SidTrie:
        """Move the trie's tensors to ``device`` (in place; returns self)."""
        device = torch.device(device)
        for name in ("keys", "ptr", "tokens"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        self.device = device
        return self

    def save(self, path: str | Path) -> None:
        """Write the trie to one file (``torch.save``), e.g. for a vLLM engine process to load."""
        torch.save({"vocab_size": self.vocab_size, "depth": self.depth, "num_sequences": self.num_sequences,
                    "labels": self.labels, "token_names": self.token_names,
                    "keys": [t.cpu() for t in self.keys], "ptr": [t.cpu() for t in self.ptr],
                    "tokens": [t.cpu() for t in self.tokens], "max_degree": self.max_degree}, str(path))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SidTrie:
        """Read a trie written by :meth:`save`."""
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        trie = cls.__new__(cls)
        for key in ("vocab_size", "depth", "num_sequences", "labels", "token_names", "keys", "ptr",
                    "tokens", "max_degree"):
            setattr(trie, key, state[key])
        trie.device = torch.device("cpu")
        return trie.to(device)

    @property
    def nbytes(self) -> int:
        """Size of the trie's tensors (grows with the catalog, unlike a decoding step)."""
        return sum(t.numel() * t.element_size() for name in ("keys", "ptr", "tokens") for t in getattr(self, name))

    # -- the vectorised operations -----------------------------------------------------------------

    def root(self, rows: int) -> torch.Tensor:
        """Node ids of ``rows`` empty prefixes."""
        return torch.zeros(rows, dtype=torch.long, device=self.device)

    def advance(self, nodes: torch.Tensor, depth: int, tokens: torch.Tensor) -> torch.Tensor:
        """Follow one edge per row: depth-``depth`` ``nodes`` + ``tokens`` -> depth+1 node ids.

        Dead rows (``-1``) stay dead. A live row whose token is not a child raises
        :class:`UnknownPrefixError`.
        """
        if not 0 <= depth < self.depth:
            raise UnknownPrefixError(f"a SID has {self.depth} tokens; cannot extend a prefix of {depth}")
        keys = self.keys[depth]
        tokens = tokens.to(device=self.device, dtype=torch.long)
        nodes = nodes.to(self.device)
        live = nodes >= 0
        query = nodes.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        found = (keys[pos] == query) & (tokens >= 0) & (tokens < self.vocab_size)
        bad = live & ~found
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            raise UnknownPrefixError(
                f"row {row}: token {self._name(int(tokens[row]))} after a {depth}-token prefix is not in "
                f"the SID trie ({self.num_sequences} SIDs); {int(bad.sum())} row(s) affected. "
                "Constrained decoding never falls back to unconstrained generation.", row=row)
        return torch.where(live, pos, torch.full_like(pos, -1))

    def walk(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Node ids of ``prefixes`` (``R x t`` token ids, ``t <= depth``) from the root."""
        if prefixes.ndim != 2 or prefixes.shape[1] > self.depth:
            raise UnknownPrefixError(f"prefixes must be (rows, t <= {self.depth}), got {tuple(prefixes.shape)}")
        nodes = self.root(prefixes.shape[0])
        for d in range(prefixes.shape[1]):
            try:
                nodes = self.advance(nodes, d, prefixes[:, d])
            except UnknownPrefixError as exc:
                shown = " ".join(self._name(int(t)) for t in prefixes[exc.row, : d + 1])
                raise UnknownPrefixError(f"{exc} (prefix: {shown})", row=exc.row) from None
        return nodes

    def allowed_tokens(self, nodes: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Children of each depth-``depth`` node, padded: (tokens, valid), both ``R x max_degree``."""
        ptr, toks = self.ptr[depth], self.tokens[depth]
        nodes = nodes.to(self.device)
        live = nodes >= 0
        node = nodes.clamp(min=0)
        start = ptr[node]
        degree = torch.where(live, ptr[node + 1] - start, torch.zeros_like(start))
        offsets = torch.arange(self.max_degree[depth], device=self.device)
        valid = offsets[None, :] < degree[:, None]
        index = (start[:, None] + offsets[None, :]).clamp(max=toks.numel() - 1)
        return toks[index], valid

    def allowed_mask(self, nodes: torch.Tensor, depth: int, width: int | None = None) -> torch.Tensor:
        """Boolean ``R x width`` mask of the tokens each row may emit next (``width`` >= vocab size;
        a model's logits may be wider than its tokenizer). One scatter for all rows."""
        width = width or self.vocab_size
        if width < self.vocab_size:
            raise ValueError(f"mask width {width} is below the trie's vocabulary size {self.vocab_size}")
        # beams share prefixes (every row shares the root at depth 0): build one mask row per
        # distinct node, then expand it to the rows with one gather
        distinct, inverse = torch.unique(nodes.to(self.device), return_inverse=True)
        tokens, valid = self.allowed_tokens(distinct, depth)
        mask = torch.zeros(distinct.shape[0], width + 1, dtype=torch.bool, device=self.device)
        # padding slots write into the spare last column, which is dropped
        mask.scatter_(1, torch.where(valid, tokens, torch.full_like(tokens, width)), True)
        return mask[inverse, :width]

    def mask_scores(self, scores: torch.Tensor, nodes: torch.Tensor, depth: int) -> torch.Tensor:
        """``scores`` (``R x V``) with every token the trie forbids set to ``-inf``."""
        mask = self.allowed_mask(nodes, depth, scores.shape[-1]).to(scores.device)
        return torch.where(mask, scores, torch.tensor(NEG_INF, dtype=scores.dtype, device=scores.device))

    def label_of(self, leaves: torch.Tensor) -> list[str | None]:
        """SID strings of depth-``depth`` leaf nodes (``None`` for dead rows)."""
        return [self.labels[i] if i >= 0 else None for i in leaves.tolist()]

    def _name(self, token: int) -> str:
        return self.token_names.get(token, str(token))


def _atomic_ids(tokenizer: Any, tokens: Sequence[str]) -> tuple[list[Any], list[str]]:
    """(ids of ``tokens``, the ones among them that are not one atomic token of ``tokenizer``)."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [tok for tok, i in zip(tokens, ids) if i is None or (i == unk and tok != tokenizer.unk_token)]
    if not missing:
        # an id can exist while the text still splits differently (token not registered as added)
        encoded = tokenizer(list(tokens), add_special_tokens=False)["input_ids"]
        missing = [tok for tok, i, enc in zip(tokens, ids, encoded) if enc != [i]]
    return ids, missing


def missing_tokens(tokenizer: Any, tokens: Sequence[str]) -> list[str]:
    """The SID ``tokens`` that are not one atomic token of ``tokenizer``."""
    return _atomic_ids(tokenizer, tokens)[1]


def token_ids(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Ids of SID ``tokens``, each required to be one atomic token of ``tokenizer``.

    Raises :class:`MissingSidTokensError` naming the missing ones (a checkpoint trained without
    this SID map's vocabulary).
    """
    ids, missing = _atomic_ids(tokenizer, tokens)
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise MissingSidTokensError(
            f"the checkpoint's tokenizer lacks {len(missing)} of the {len(tokens)} SID tokens used by the "
            f"SID map ({shown}); was the model trained with this SID map? (add_sid_tokens adds them)")
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------------------------
# transformers integration
# ----------------------------------------------------------------------------------------------

try:  # transformers is a dependency of every image; the guard keeps this module importable alone
    from transformers import LogitsProcessor as _HFLogitsProcessor
except ImportError:  # pragma: no cover
    _HFLogitsProcessor = object  # type: ignore[assignment,misc]


class SidTrieLogitsProcessor(_HFLogitsProcessor):
    """A transformers ``LogitsProcessor`` restricting the tokens after ``prompt_length`` to SIDs.

    Works with greedy, sampling and beam search ``generate``: at each step the generated part of
    every row (``input_ids[:, prompt_length:]``) is walked through the trie (``depth`` searchsorted
    calls for all rows together) and the disallowed tokens are set to ``-inf``. Once a SID is
    complete only ``eos_token_id`` may follow (pass it and allow ``max_new_tokens > depth``), or
    set ``max_new_tokens`` to the SID length.

    >>> proc = SidTrieLogitsProcessor(trie, prompt_length=enc.input_ids.shape[1], eos_token_id=tok.eos_token_id)
    >>> model.generate(**enc, num_beams=10, num_return_sequences=10, max_new_tokens=trie.depth,
    ...                logits_processor=LogitsProcessorList([proc]))
    """

    def __init__(self, trie: SidTrie, prompt_length: int, eos_token_id: int | None = None):
        self.trie, self.prompt_length, self.eos_token_id = trie, int(prompt_length), eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_length
        if generated < 0:
            raise ValueError(f"input_ids are {input_ids.shape[1]} tokens, shorter than prompt_length "
                             f"{self.prompt_length}")
        trie = self.trie
        depth = min(generated, trie.depth)
        nodes = trie.walk(input_ids[:, self.prompt_length : self.prompt_length + depth].to(trie.device))
        if generated < trie.depth:
            return trie.mask_scores(scores, nodes, generated)
        if self.eos_token_id is None:
            raise UnknownPrefixError(f"the SID is complete after {trie.depth} tokens and no eos_token_id was "
                                     "given: set max_new_tokens to the SID length or pass eos_token_id")
        if generated > trie.depth:
            after = input_ids[:, self.prompt_length + trie.depth]
            if bool((after != self.eos_token_id).any()):
                raise UnknownPrefixError("a complete SID was followed by a token other than EOS")
        out = torch.full_like(scores, NEG_INF)
        out[:, self.eos_token_id] = scores[:, self.eos_token_id]
        return out


@dataclass
class RankedSids:
    """The beams of one prompt, best first: SID strings, their summed token log-probabilities
    (under the model's unconstrained distribution, as the recipe's length_penalty=0 beam search
    ranks them) and their token ids (``n x depth``). Fewer than ``num_beams`` entries only when
    the catalog has fewer SIDs."""

    sids: list[str]
    scores: list[float]
    token_ids: torch.Tensor


def ensure_pad_token(tokenizer: Any) -> None:
    """Batched decoder-only generation needs a pad token: use EOS when there is none (the recipe's
    setting, with left padding)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


@torch.inference_mode()
def constrained_beam_search(model: Any, tokenizer: Any, prompts: Sequence[str], trie: SidTrie, *,
                            num_beams: int = 10, batch_size: int = 8) -> list[RankedSids]:
    """Beam search over the trie's SIDs for each prompt text; returns one :class:`RankedSids` each.

    The prompts (left-padded, ``batch_size`` at a time) are prefilled once; the KV cache is then
    repeated for the ``num_beams`` beams and reordered in place as beams are selected, so each
    of the remaining ``depth - 1`` steps runs the model on one new token per beam (HF
    ``generate`` would prefill every prompt ``num_beams`` times). Scores are the sum of the SID
    tokens' log-probabilities, identical to an exhaustive teacher-forced scoring of the returned
    SIDs; with ``num_beams`` at least the catalog size the search is exhaustive.
    """
    ensure_pad_token(tokenizer)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    return constrained_beam_search_ids(model, prompt_ids, trie, pad_token_id=tokenizer.pad_token_id,
                                       num_beams=num_beams, batch_size=batch_size)


@torch.inference_mode()
def constrained_beam_search_ids(model: Any, prompt_ids: Sequence[Sequence[int]], trie: SidTrie, *,
                                pad_token_id: int, num_beams: int = 10, batch_size: int = 8) -> list[RankedSids]:
    """:func:`constrained_beam_search` on token ids: for callers whose prefix must be exactly the
    tokens they hold (e.g. GRPO rollouts continuing sampled reasoning, where re-tokenizing the
    decoded text could merge tokens differently)."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1 (got {num_beams})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("empty prompt")
    device = next(model.parameters()).device
    if trie.device != device:
        trie.to(device)
    results: list[RankedSids] = []
    for start in range(0, len(prompt_ids), batch_size):
        results.extend(_beam_batch(model, list(prompt_ids[start : start + batch_size]), pad_token_id, trie,
                                   num_beams, device))
    return results


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` (CPU tensors) of token-id lists."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def _beam_batch(model: Any, prompt_ids: list[Sequence[int]], pad_token_id: int, trie: SidTrie, num_beams: int,
                device: torch.device) -> list[RankedSids]:
    input_ids, attention = left_pad(prompt_ids, pad_token_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    batch = input_ids.shape[0]
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    width = logprobs.shape[-1]
    beams = min(num_beams, width)
    masked = trie.mask_scores(logprobs, trie.root(batch), 0)
    scores, tokens = masked.topk(beams, dim=-1)  # (batch, beams)
    alive = scores > NEG_INF
    parents = torch.where(alive, trie.root(batch)[:, None].expand(-1, beams), -1).reshape(-1)
    nodes = trie.advance(parents, 0, tokens.reshape(-1))
    sequences = tokens.reshape(batch * beams, 1)
    if trie.depth > 1:
        cache.batch_repeat_interleave(beams)
        attention = attention.repeat_interleave(beams, dim=0)
        last_position = positions[:, -1].repeat_interleave(beams)
        batch_offset = (torch.arange(batch, device=device) * beams)[:, None]
    for depth in range(1, trie.depth):
        attention = torch.cat([attention, attention.new_ones(batch * beams, 1)], dim=1)
        last_position = last_position + 1
        out = model(input_ids=sequences[:, -1:], attention_mask=attention, position_ids=last_position[:, None],
                    past_key_values=cache, use_cache=True)
        logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        masked = trie.mask_scores(logprobs, nodes, depth)  # dead beams: all -inf
        candidates = (scores.reshape(-1, 1) + masked).reshape(batch, beams * width)
        scores, index = candidates.topk(beams, dim=-1)
        rows = (batch_offset + index // width).reshape(-1)
        tokens = (index % width).reshape(-1)
        alive = scores.reshape(-1) > NEG_INF
        nodes = trie.advance(torch.where(alive, nodes[rows], -1), depth, tokens)
        sequences = torch.cat([sequences[rows], tokens[:, None]], dim=1)
        if depth + 1 < trie.depth:
            cache.reorder_cache(rows)
    labels = trie.label_of(nodes)
    flat_scores = scores.reshape(-1).tolist()
    results = []
    for b in range(batch):
        keep = [i for i in range(b * beams, (b + 1) * beams) if labels[i] is not None]
        results.append(RankedSids(sids=[labels[i] for i in keep], scores=[flat_scores[i] for i in keep],
                                  token_ids=sequences[keep].cpu()))
    return results
