"""Input artifacts of the training stages, checked, and their encoding into SFT examples.

Readers validate what the contracts promise (columns, allowed values, SIDs known to the
catalog) and raise :class:`InputError` naming the artifact, row and value. Encoders turn rows
into ``input_ids`` + ``completion_mask``, cut to the last ``max_length`` tokens (the recipe's
cutoff keeps the end, where the answer is; TRL's own ``keep_end`` truncation is deprecated);
TRL's SFTTrainer (``completion_only_loss=True``) turns the mask into labels (-100 where it is
0) and trains.

* chat rows ("response" loss): the chat-templated prompt, then the empty think block
  (``prompts.EMPTY_THINK``, how Qwen3 renders a non-thinking turn) unsupervised, then the bare
  answer supervised; the end-of-turn token is appended, supervised only if asked;
* narrative rows ("full" loss): the plain text + end token, every token supervised, no chat
  template;
* reasoning rows: the reasoning prompt, then ``<think>reasoning</think>`` + target SID + end
  token, all supervised (RECIPE.md section 4).

Prompt and completion are tokenized separately and concatenated, as at inference, where the
prompt is tokenized alone and the model continues it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from components.common import leaks, prompts, sid, storage

STATUSES = {"active", "new", "retired"}


class InputError(ValueError):
    """An input artifact breaks its contract; the message names the artifact, row and value."""


def _require(table: pa.Table, columns: Iterable[str], what: str, uri: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{what} {uri}: missing column(s) {missing} (has {table.column_names})")
    if table.num_rows == 0:
        raise InputError(f"{what} {uri}: no rows")


# ----------------------------------------------------------------------------------------------
# sid_map -> catalog
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """The SID catalog of a sid_map: non-retired rows, one SID per item, unique."""

    item_sid: dict[str, str]
    """item_id -> SID of every non-retired item."""
    levels: int
    """Tokens per SID."""
    tokens: tuple[str, ...]
    """Every SID token used by any row (retired ones included), level-major: the vocabulary
    added to the tokenizer."""
    sids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sids", frozenset(self.item_sid.values()))


def read_catalog(uri: str) -> Catalog:
    table = storage.read_parquet(uri)
    _require(table, ["item_id", "codes", "sid", "status"], "sid_map", uri)
    rows = table.select(["item_id", "codes", "sid", "status"]).to_pylist()
    item_sid: dict[str, str] = {}
    owner: dict[str, str] = {}
    used: set[tuple[int, int]] = set()
    levels = None
    for i, row in enumerate(rows):
        where = f"sid_map {uri} row {i} (item {row['item_id']!r})"
        if row["status"] not in STATUSES:
            raise InputError(f"{where}: status {row['status']!r} not in {sorted(STATUSES)}")
        codes = row["codes"] or []
        try:
            parsed = sid.parse_sid(row["sid"])
        except sid.SidError as exc:
            raise InputError(f"{where}: {exc}") from None
        if tuple(codes) != parsed:
            raise InputError(f"{where}: codes {codes} do not match sid {row['sid']}")
        if levels is None:
            levels = len(codes)
        elif len(codes) != levels:
            raise InputError(f"{where}: {len(codes)} levels, other rows have {levels}")
        used.update(enumerate(codes))
        if row["status"] == "retired":
            continue
        if row["sid"] in owner:
            raise InputError(f"{where}: SID {row['sid']} already belongs to item {owner[row['sid']]!r}")
        if row["item_id"] in item_sid:
            raise InputError(f"{where}: item listed twice")
        owner[row["sid"]] = row["item_id"]
        item_sid[row["item_id"]] = row["sid"]
    if not item_sid:
        raise InputError(f"sid_map {uri}: every row is retired (empty catalog)")
    tokens = tuple(sid.token(level, code) for level, code in sorted(used))
    return Catalog(item_sid=item_sid, levels=levels, tokens=tokens)


def check_sids(text: str, catalog: Catalog, where: str) -> None:
    """Every complete SID mentioned in ``text`` must be a catalog item."""
    for found in sid.find_sids(text, catalog.levels):
        if found not in catalog.sids:
            raise InputError(f"{where}: SID {found} is not in the sid_map catalog")


# ----------------------------------------------------------------------------------------------
# corpus, samples, reasoning
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusRow:
    task: str
    loss: str
    messages: list[dict[str, str]]
    text: str | None


def read_corpus(uri: str, catalog: Catalog, tasks: Sequence[str] | None = None) -> list[CorpusRow]:
    """Corpus rows (optionally only ``tasks``), checked: loss kinds, chat shape, known SIDs."""
    table = storage.read_parquet(uri)
    _require(table, ["task", "loss", "messages", "text"], "corpus", uri)
    known = set(table.column("task").to_pylist())
    if tasks is not None and (unknown := sorted(set(tasks) - known)):
        raise InputError(f"corpus {uri}: task(s) {unknown} requested but absent (corpus tasks: {sorted(known)})")
    rows = []
    for i, row in enumerate(table.select(["task", "loss", "messages", "text"]).to_pylist()):
        if tasks is not None and row["task"] not in tasks:
            continue
        where = f"corpus {uri} row {i} (task {row['task']!r})"
        messages = row["messages"] or []
        if row["loss"] == "response":
            last = messages[-1] if messages else {}
            if last.get("role") != "assistant" or not (last.get("content") or "").strip():
                raise InputError(f"{where}: a response row must end with a non-empty assistant message")
            if any(m.get("role") not in ("system", "user", "assistant") for m in messages):
                raise InputError(f"{where}: roles must be system/user/assistant")
            for m in messages:
                check_sids(m["content"] or "", catalog, where)
        elif row["loss"] == "full":
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise InputError(f"{where}: a full-loss row needs a non-empty text")
            check_sids(row["text"], catalog, where)
        else:
            raise InputError(f"{where}: loss {row['loss']!r} is neither 'response' nor 'full'")
        rows.append(CorpusRow(row["task"], row["loss"], messages, row["text"]))
    if not rows:
        raise InputError(f"corpus {uri}: no rows for tasks {list(tasks or [])}")
    return rows


def read_valid_histories(uri: str, catalog: Catalog, limit: int | None, seed: int) -> list[tuple[list[str], str]]:
    """(history SIDs, target SID) of the valid split of ``samples`` (a seeded sample of ``limit``)."""
    table = storage.read_parquet(uri)
    _require(table, ["user_id", "history", "target", "split"], "samples", uri)
    out = []
    for i, row in enumerate(table.select(["history", "target", "split"]).to_pylist()):
        if row["split"] != "valid":
            continue
        missing = [item for item in [*row["history"], row["target"]] if item not in catalog.item_sid]
        if missing:
            raise InputError(f"samples {uri} row {i}: item(s) {missing[:3]} have no SID in the sid_map")
        out.append(([catalog.item_sid[item] for item in row["history"]], catalog.item_sid[row["target"]]))
    if not out:
        raise InputError(f"samples {uri}: no rows in the valid split (needed for the validation loss)")
    if limit is not None and len(out) > limit:
        out = random.Random(seed).sample(out, limit)
    return out


@dataclass(frozen=True)
class ReasoningRow:
    history_sids: list[str]
    reasoning: str
    target_sid: str


def read_reasoning(uri: str, catalog: Catalog) -> list[ReasoningRow]:
    """Reasoning rows, checked: SIDs in the catalog, non-empty reasoning that never names the target."""
    table = storage.read_parquet(uri)
    _require(table, ["history_sids", "reasoning", "target_sid"], "reasoning", uri)
    rows = []
    for i, row in enumerate(table.select(["history_sids", "reasoning", "target_sid"]).to_pylist()):
        where = f"reasoning {uri} row {i}"
        history, text, target = row["history_sids"] or [], row["reasoning"], row["target_sid"]
        if not history:
            raise InputError(f"{where}: empty history_sids")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: empty reasoning")
        if target not in catalog.sids:
            raise InputError(f"{where}: target SID {target!r} is not in the sid_map catalog")
        for h in history:
            if h not in catalog.sids:
                raise InputError(f"{where}: history SID {h!r} is not in the sid_map catalog")
        check_sids(text, catalog, where)
        if leaks.names_sid(text, target):
            raise InputError(f"{where}: the reasoning mentions the target SID {target}, in some spelling (it must not)")
        rows.append(ReasoningRow(list(history), text, target))
    return rows


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Tokenized examples for SFTTrainer, plus counts for the stage stats."""

    max_length: int
    """Longer examples keep their last ``max_length`` tokens."""
    input_ids: list[list[int]] = field(default_factory=list)
    completion_mask: list[list[int]] = field(default_factory=list)
    rows: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    supervised_tokens: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)

    def add(self, kind: str, ids: list[int], mask: list[int]) -> None:
        if len(ids) > self.max_length:
            ids, mask = ids[-self.max_length :], mask[-self.max_length :]
            self.truncated[kind] += 1
        self.input_ids.append(ids)
        self.completion_mask.append(mask)
        self.rows[kind] += 1
        self.tokens[kind] += len(ids)
        self.supervised_tokens[kind] += sum(mask)

    def dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "completion_mask": self.completion_mask})

    def stats(self) -> dict[str, Any]:
        return {"rows": dict(self.rows), "tokens": dict(self.tokens),
                "supervised_tokens": dict(self.supervised_tokens), "truncated": dict(self.truncated),
                "total_rows": sum(self.rows.values()), "total_tokens": sum(self.tokens.values())}


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str,
                             supervise_end: bool) -> tuple[list[int], list[int]]:
    """``prompt`` unsupervised, ``completion`` supervised, then the end token (supervised if asked)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + completion_ids + [tokenizer.eos_token_id]
    mask = [0] * len(prompt_ids) + [1] * len(completion_ids) + [int(supervise_end)]
    return ids, mask


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Plain language modelling: every token of ``text`` + end token supervised."""
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return ids, [1] * len(ids)


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt of a non-thinking answer: chat-templated turns + the empty think block."""
    return prompts.render_prompt(tokenizer, messages) + prompts.EMPTY_THINK


def encode_corpus(tokenizer: Any, rows: Iterable[CorpusRow], supervise_end: bool, max_length: int) -> Encoded:
    out = Encoded(max_length)
    for row in rows:
        if row.loss == "full":
            out.add(row.task, *encode_text(tokenizer, row.text))
        else:
            *context, answer = row.messages
            turns = [{"role": m["role"], "content": m["content"]} for m in context]
            out.add(row.task, *encode_prompt_completion(tokenizer, chat_prompt(tokenizer, turns),
                                                        answer["content"], supervise_end))
    return out


def encode_direct(tokenizer: Any, histories: Iterable[tuple[list[str], str]], supervise_end: bool,
                  max_length: int) -> Encoded:
    """The main recommendation task (SID history -> next SID), e.g. the valid split."""
    out = Encoded(max_length)
    for history, target in histories:
        prompt = chat_prompt(tokenizer, prompts.direct_messages(history))
        out.add("valid_sid2sid", *encode_prompt_completion(tokenizer, prompt, target, supervise_end))
    return out


def encode_reasoning(tokenizer: Any, rows: Iterable[ReasoningRow], kind: str, max_length: int) -> Encoded:
    """Reasoning activation: the think block, the SID and the end token are all supervised."""
    out = Encoded(max_length)
    for row in rows:
        prompt = prompts.render_prompt(tokenizer, prompts.reasoning_messages(row.history_sids))
        completion = prompts.think_block(row.reasoning) + row.target_sid
        out.add(kind, *encode_prompt_completion(tokenizer, prompt, completion, supervise_end=True))
    return out
