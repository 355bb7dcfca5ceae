"""Every artifact the stages pass to each other, declared once: its kind, its schema, one
validating reader returning a typed object, its writer, and the fingerprint binding the
artifacts of one SID space together.

A stage names its inputs and outputs by :class:`ArtifactKind` (``components.common.stage``);
the kind gives the kfp type of the DAG's edge, the file name under a CLI ``--out`` folder, and a
cheap ``check`` that :meth:`Stage.execute` runs on every input before the stage's work starts.
Readers check what the contract promises (columns and their types, allowed values, unique ids,
SIDs that parse and agree with their codes) and raise :class:`InputError` naming the artifact,
the row and the value.

**The SID space.** Every SID means something only relative to the codebooks that made it. The
codebooks artifact's weights digest is that space's fingerprint (``sid_space``): ``sid_quantize``
writes it into the codebooks' ``config.json`` and the sid_map's schema metadata, and every model
trained on a sid_map records it (``sidreasoner.json`` in the model folder). An incremental run keeps
the codebooks, so its sid_map stays in the same space and the production model can still be
scored with it; a sid_map, codebooks or model from another quantization run has another
fingerprint and is refused with a message naming both (:func:`check_same_sid_space`).

Contracts (Parquet unless said otherwise):

* ``items``: item_id, title, description, brand, categories (list<string>) [+ upstream_sid];
* ``samples``: user_id, history (list<string>, oldest first), target, timestamp (int64), split
  (train | valid | test);
* ``sid_map``: item_id, codes (list<int32>), sid, status (active | new | retired); metadata
  ``levels``, ``codebook_sizes``, ``sidreasoner.sid_space``;
* ``codebooks``: folder, ``weights.safetensors`` + ``config.json`` (``sid_space`` among its keys);
* ``embeddings``: item_id, embedding (fixed_size_list<float32>);
* ``corpus``, ``reasoning``: see :data:`CORPUS_SCHEMA`, :data:`REASONING_SCHEMA`;
* ``model``: a ``save_pretrained`` folder + ``sid_vocab.json`` + ``sidreasoner.json``;
* ``metrics``, ``predictions``, ``rankings``: see their schemas below;
* ``stats``, ``previous``, ``decision``: JSON documents; ``report``: HTML.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from components.common import leaks, storage
from components.common import sid as sid_codec
from components.common.errors import InputError

SPLITS = ("train", "valid", "test")
STATUSES = ("active", "new", "retired")

#: Schema metadata key of the SID-space fingerprint (sid_map, corpus, reasoning).
SID_SPACE_KEY = "sidreasoner.sid_space"
#: The model folder's own record: which SID space and sid_map it was trained on.
MODEL_RECORD = "sidreasoner.json"
SID_VOCAB_FILE = "sid_vocab.json"
CODEBOOKS_CONFIG = "config.json"

# ----------------------------------------------------------------------------------------------
# Schemas
# ----------------------------------------------------------------------------------------------

ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
    ("brand", pa.string()), ("categories", pa.list_(pa.string())),
])
SAMPLES_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("history", pa.list_(pa.string())), ("target", pa.string()),
    ("timestamp", pa.int64()), ("split", pa.string()),
])
SID_MAP_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("sid", pa.string()), ("status", pa.string()),
])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
#: ``corpus``: one row per training example. Chat rows (``loss="response"``): ``messages`` are the
#: system?/user/assistant turns, the assistant content being the bare answer, also in ``target``;
#: ``text`` is null. Narrative rows (``loss="full"``): ``text`` is the whole training text,
#: ``messages`` is empty, ``target`` is the SID the narrative is about or ends with.
CORPUS_SCHEMA = pa.schema([
    ("task", pa.string()), ("loss", pa.string()), ("messages", pa.list_(MESSAGE)), ("text", pa.string()),
    ("target", pa.string()), ("source", pa.string()), ("item_id", pa.string()), ("user_id", pa.string()),
    ("teacher_model", pa.string()), ("prompt_hash", pa.string()),
])
#: ``reasoning``: the reasoning-activation and GRPO data. ``reasoning`` is the user-centric step-1
#: reasoning path; it never mentions the target's SID or title.
REASONING_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("history_item_ids", pa.list_(pa.string())), ("history_sids", pa.list_(pa.string())),
    ("reasoning", pa.string()), ("target_item_id", pa.string()), ("target_sid", pa.string()),
    ("source", pa.string()),
])
#: ``metrics``: one row per (model, mode, split, K).
METRICS_SCHEMA = pa.schema([
    ("model", pa.string()), ("mode", pa.string()), ("split", pa.string()), ("k", pa.int32()),
    ("hr", pa.float64()), ("ndcg", pa.float64()), ("valid_rate", pa.float64()), ("n", pa.int64()),
    ("latency_ms", pa.float64()),
])
#: ``predictions``: one row per (model, mode, evaluated sample row).
PREDICTIONS_SCHEMA = pa.schema([
    ("model", pa.string()), ("mode", pa.string()), ("row", pa.int64()), ("split", pa.string()),
    ("user_id", pa.string()), ("history", pa.list_(pa.string())), ("target", pa.string()),
    ("ranked_items", pa.list_(pa.string())), ("ranked_sids", pa.list_(pa.string())),
    ("ranked_titles", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())), ("rank", pa.int32()),
    ("reasoning", pa.string()), ("reasoning_closed", pa.bool_()), ("latency_s", pa.float64()),
])
#: ``rankings``: the baselines' top items for every valid and test sample row (``row`` is the
#: row's position in ``samples``).
RANKINGS_SCHEMA = pa.schema([
    ("model", pa.string()), ("row", pa.int64()), ("ranked_items", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())), ("latency_s", pa.float64()),
])


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with exactly the schema's fields) as a table of ``schema``."""
    return pa.Table.from_pylist(rows, schema=schema)


# ----------------------------------------------------------------------------------------------
# Checks shared by the readers
# ----------------------------------------------------------------------------------------------


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def require_columns(table: pa.Table, schema: pa.Schema, what: str, uri: str, *, allow_empty: bool = False) -> None:
    """The table has every column of ``schema`` with a compatible type (and rows, unless allowed)."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise InputError(f"{what} {uri}: missing column(s) {missing} (has {table.column_names})")
    for expected in schema:
        found = table.schema.field(expected.name).type
        if not _compatible(found, expected.type):
            raise InputError(f"{what} {uri}: column {expected.name!r} has type {found}, expected {expected.type}")
    if table.num_rows == 0 and not allow_empty:
        raise InputError(f"{what} {uri}: no rows")


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    if found == expected or pa.types.is_null(found):
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(found)
    if pa.types.is_list(expected):
        return ((pa.types.is_list(found) or pa.types.is_large_list(found) or pa.types.is_fixed_size_list(found))
                and _compatible(found.value_type, expected.value_type))
    return False


def schema_metadata(table: pa.Table | pa.Schema) -> dict[str, str]:
    schema = table.schema if isinstance(table, pa.Table) else table
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def with_sid_space(table: pa.Table, sid_space: str | None) -> pa.Table:
    """``table`` with the SID-space fingerprint in its schema metadata (nothing when None)."""
    if sid_space is None:
        return table
    return table.replace_schema_metadata({**schema_metadata(table), SID_SPACE_KEY: sid_space})


# ----------------------------------------------------------------------------------------------
# items
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemText:
    """What the catalog says about an item."""

    item_id: str
    title: str
    description: str
    brand: str
    categories: tuple[str, ...]

    @property
    def category(self) -> str:
        """The most specific category ('' when none)."""
        return self.categories[-1] if self.categories else ""


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


@dataclass(frozen=True)
class Items:
    """The ``items`` artifact: every catalog item's text, by id (file order kept)."""

    by_id: dict[str, ItemText]
    table: pa.Table
    """The artifact as read (extra columns such as ``upstream_sid`` included)."""

    def frame(self):
        """The table as a pandas DataFrame."""
        return self.table.to_pandas()


def read_items(uri: str) -> Items:
    table = storage.read_parquet(uri)
    require_columns(table, ITEMS_SCHEMA, "items", uri)
    by_id: dict[str, ItemText] = {}
    for i, row in enumerate(table.select(ITEMS_SCHEMA.names).to_pylist()):
        where = f"items {uri} row {i}"
        if not _is_text(row["item_id"]):
            raise InputError(f"{where}: item_id must be a non-empty string (got {row['item_id']!r})")
        if not _is_text(row["title"]):
            raise InputError(f"{where} (item {row['item_id']!r}): title must be a non-empty string "
                             f"(got {row['title']!r})")
        if row["item_id"] in by_id:
            raise InputError(f"{where}: duplicate item_id {row['item_id']!r}")
        by_id[row["item_id"]] = ItemText(
            item_id=row["item_id"], title=row["title"].strip(), description=_text(row["description"]),
            brand=_text(row["brand"]), categories=tuple(str(c) for c in row["categories"] or [] if c))
    return Items(by_id=by_id, table=table)


def items_table(frame) -> pa.Table:
    """The ``items`` table of a DataFrame with the contract's columns (+ ``upstream_sid``)."""
    schema = ITEMS_SCHEMA
    if "upstream_sid" in frame.columns:
        schema = schema.append(pa.field("upstream_sid", pa.string()))
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


# ----------------------------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One next-item example: history item ids (oldest first) and the target item id. ``row``
    is its position in the samples file (the key evaluation, baselines and predictions share)."""

    row: int
    user_id: str
    history: tuple[str, ...]
    target: str
    timestamp: int
    split: str


@dataclass(frozen=True)
class Samples:
    """The ``samples`` artifact, checked."""

    rows: tuple[Sample, ...]

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.rows if s.split == name]

    def counts(self) -> dict[str, int]:
        return {split: sum(s.split == split for s in self.rows) for split in SPLITS}


def read_samples(uri: str) -> Samples:
    table = storage.read_parquet(uri)
    require_columns(table, SAMPLES_SCHEMA, "samples", uri)
    rows = []
    for i, row in enumerate(table.select(SAMPLES_SCHEMA.names).to_pylist()):
        where = f"samples {uri} row {i}"
        for column in ("user_id", "target"):
            if not _is_text(row[column]):
                raise InputError(f"{where}: {column} must be a non-empty string (got {row[column]!r})")
        history = row["history"]
        if not history or any(not _is_text(h) for h in history):
            raise InputError(f"{where}: history must be a non-empty list of item ids (got {history!r})")
        if row["timestamp"] is None:
            raise InputError(f"{where}: timestamp is null")
        if row["split"] not in SPLITS:
            raise InputError(f"{where}: split {row['split']!r} is not one of {list(SPLITS)}")
        rows.append(Sample(i, row["user_id"], tuple(history), row["target"], int(row["timestamp"]), row["split"]))
    return Samples(tuple(rows))


def samples_table(frame) -> pa.Table:
    return pa.Table.from_pandas(frame[SAMPLES_SCHEMA.names], schema=SAMPLES_SCHEMA, preserve_index=False)


# ----------------------------------------------------------------------------------------------
# sid_map and the catalog
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SidMapRows:
    """The ``sid_map`` artifact as rows (what ``sid_quantize`` extends incrementally)."""

    item_ids: list[str]
    codes: list[tuple[int, ...]]
    statuses: list[str]
    sid_space: str | None
    codebook_sizes: list[int] | None


def read_sid_map(uri: str, codebook_sizes: Sequence[int] | None = None) -> SidMapRows:
    """Read and check a sid_map: well-formed SIDs agreeing with their codes, one number of
    levels, unique item ids, unique SIDs (retired rows included: a SID is never reused), codes
    inside ``codebook_sizes`` when given."""
    table = storage.read_parquet(uri)
    require_columns(table, SID_MAP_SCHEMA, "sid_map", uri)
    meta = schema_metadata(table)
    item_ids, codes_rows, statuses = [], [], []
    seen_items: dict[str, int] = {}
    seen_sids: dict[tuple[int, ...], int] = {}
    levels = len(codebook_sizes) if codebook_sizes is not None else None
    for i, row in enumerate(table.select(SID_MAP_SCHEMA.names).to_pylist()):
        where = f"sid_map {uri} row {i} (item {row['item_id']!r})"
        if not _is_text(row["item_id"]):
            raise InputError(f"sid_map {uri} row {i}: item_id must be a non-empty string (got {row['item_id']!r})")
        if row["item_id"] in seen_items:
            raise InputError(f"{where}: item listed twice (first at row {seen_items[row['item_id']]})")
        if row["status"] not in STATUSES:
            raise InputError(f"{where}: status {row['status']!r} is not one of {list(STATUSES)}")
        try:
            parsed = sid_codec.parse_sid(row["sid"])
        except sid_codec.SidError as exc:
            raise InputError(f"{where}: {exc}") from None
        if row["codes"] is None or tuple(row["codes"]) != parsed:
            raise InputError(f"{where}: codes {row['codes']} do not match sid {row['sid']}")
        if levels is None:
            levels = len(parsed)
        elif len(parsed) != levels:
            raise InputError(f"{where}: {len(parsed)} levels, expected {levels}")
        if codebook_sizes is not None and any(not 0 <= c < n for c, n in zip(parsed, codebook_sizes)):
            raise InputError(f"{where}: codes {list(parsed)} outside codebook sizes {list(codebook_sizes)}")
        if parsed in seen_sids:
            raise InputError(f"{where}: SID {row['sid']} already belongs to row {seen_sids[parsed]} (every SID "
                             "names one item, retired ones included)")
        seen_items[row["item_id"]] = i
        seen_sids[parsed] = i
        item_ids.append(row["item_id"])
        codes_rows.append(parsed)
        statuses.append(row["status"])
    if all(s == "retired" for s in statuses):
        raise InputError(f"sid_map {uri}: every row is retired (empty catalog)")
    sizes = json.loads(meta["codebook_sizes"]) if "codebook_sizes" in meta else None
    return SidMapRows(item_ids, codes_rows, statuses, meta.get(SID_SPACE_KEY), sizes)


def sid_map_table(item_ids: Sequence[str], codes: Sequence[Sequence[int]], statuses: Sequence[str],
                  codebook_sizes: Sequence[int], sid_space: str | None) -> pa.Table:
    """The ``sid_map`` table (SIDs formatted from the codes; levels, sizes and space recorded)."""
    metadata = {"levels": str(len(codebook_sizes)), "codebook_sizes": json.dumps(list(codebook_sizes))}
    if sid_space is not None:
        metadata[SID_SPACE_KEY] = sid_space
    codes = [[int(c) for c in row] for row in codes]
    return pa.Table.from_arrays(
        [pa.array(list(item_ids), pa.string()), pa.array(codes, pa.list_(pa.int32())),
         pa.array([sid_codec.format_sid(row) for row in codes], pa.string()), pa.array(list(statuses), pa.string())],
        schema=SID_MAP_SCHEMA.with_metadata(metadata))


@dataclass(frozen=True)
class Item(ItemText):
    """A live catalog item: its text and its SID."""

    sid: str


@dataclass(frozen=True)
class Catalog:
    """What a model can recommend: every non-retired sid_map item, each with its own SID.

    Built from a sid_map alone (SIDs only) or with the items artifact (``items`` then holds the
    text of every live item)."""

    item_ids: tuple[str, ...]
    """Live (active or new) item ids, in sid_map order."""
    sid_of: dict[str, str]
    """Every sid_map item -> its SID (retired items too: they still appear in histories)."""
    levels: int
    """Tokens per SID."""
    tokens: tuple[str, ...]
    """Every SID token any row uses (retired rows included), level-major: the vocabulary a
    model of this catalog needs."""
    sid_space: str | None
    items: dict[str, Item] = field(default_factory=dict)
    sids: tuple[str, ...] = field(init=False)
    """Live SIDs, in sid_map order."""
    item_of: dict[str, str] = field(init=False)
    """Live SID -> its one item."""
    retired: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        sids = tuple(self.sid_of[i] for i in self.item_ids)
        object.__setattr__(self, "sids", sids)
        object.__setattr__(self, "item_of", dict(zip(sids, self.item_ids)))
        object.__setattr__(self, "retired", frozenset(set(self.sid_of) - set(self.item_ids)))

    def sid(self, item_id: str) -> str:
        return self.sid_of[item_id]

    def title(self, item_id: str) -> str:
        item = self.items.get(item_id)
        return item.title if item else f"(item {item_id})"

    def check_sids_in(self, text: str, where: str) -> None:
        """Every complete SID mentioned in ``text`` must be a live catalog item."""
        for found in sid_codec.find_sids(text, self.levels):
            if found not in self.item_of:
                raise InputError(f"{where}: SID {found} is not in the sid_map catalog")


def read_catalog(sid_map_uri: str, items_uri: str | None = None) -> Catalog:
    """The catalog of a sid_map (+ the text of its live items from ``items_uri``)."""
    rows = read_sid_map(sid_map_uri)
    sid_of = {item: sid_codec.format_sid(codes) for item, codes in zip(rows.item_ids, rows.codes)}
    live = tuple(item for item, status in zip(rows.item_ids, rows.statuses) if status != "retired")
    used = {(level, code) for codes in rows.codes for level, code in enumerate(codes)}
    tokens = tuple(sid_codec.token(level, code) for level, code in sorted(used))
    items: dict[str, Item] = {}
    if items_uri is not None:
        texts = read_items(items_uri).by_id
        missing = [item for item in live if item not in texts]
        if missing:
            raise InputError(f"sid_map {sid_map_uri}: {len(missing)} catalog item(s) have no row in items "
                             f"{items_uri} (e.g. {missing[:3]}); the two artifacts are not of one run")
        items = {item: Item(**vars(texts[item]), sid=sid_of[item]) for item in live}
    return Catalog(item_ids=live, sid_of=sid_of, levels=len(rows.codes[0]), tokens=tokens,
                   sid_space=rows.sid_space, items=items)


# ----------------------------------------------------------------------------------------------
# corpus and reasoning
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusRow:
    task: str
    loss: str
    """``response``: loss on the assistant answer; ``full``: loss on every token of ``text``."""
    messages: list[dict[str, str]]
    text: str | None


def read_corpus(uri: str, catalog: Catalog, tasks: Sequence[str] | None = None) -> list[CorpusRow]:
    """Corpus rows (only ``tasks`` when given), checked: loss kinds, chat shape, known SIDs."""
    table = storage.read_parquet(uri)
    require_columns(table, pa.schema([CORPUS_SCHEMA.field(n) for n in ("task", "loss", "messages", "text")]),
                    "corpus", uri)
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
            if last.get("role") != "assistant" or not _is_text(last.get("content")):
                raise InputError(f"{where}: a response row must end with a non-empty assistant message")
            if any(m.get("role") not in ("system", "user", "assistant") for m in messages):
                raise InputError(f"{where}: roles must be system/user/assistant")
            for message in messages:
                catalog.check_sids_in(message["content"] or "", where)
        elif row["loss"] == "full":
            if not _is_text(row["text"]):
                raise InputError(f"{where}: a full-loss row needs a non-empty text")
            catalog.check_sids_in(row["text"], where)
        else:
            raise InputError(f"{where}: loss {row['loss']!r} is neither 'response' nor 'full'")
        rows.append(CorpusRow(row["task"], row["loss"], messages, row["text"]))
    if not rows:
        raise InputError(f"corpus {uri}: no rows for tasks {list(tasks or [])}")
    return rows


@dataclass(frozen=True)
class ReasoningRow:
    history_sids: list[str]
    reasoning: str
    target_sid: str


def read_reasoning(uri: str, catalog: Catalog) -> list[ReasoningRow]:
    """Reasoning rows, checked: SIDs in the catalog, a non-empty reasoning that never names its
    target SID in any spelling (:func:`components.common.leaks.names_sid`)."""
    table = storage.read_parquet(uri)
    require_columns(table, pa.schema([REASONING_SCHEMA.field(n) for n in ("history_sids", "reasoning",
                                                                           "target_sid")]),
                    "reasoning", uri, allow_empty=True)
    known = set(catalog.sid_of.values())
    rows = []
    for i, row in enumerate(table.select(["history_sids", "reasoning", "target_sid"]).to_pylist()):
        where = f"reasoning {uri} row {i}"
        history, text, target = row["history_sids"] or [], row["reasoning"], row["target_sid"]
        if not history:
            raise InputError(f"{where}: empty history_sids")
        if not _is_text(text):
            raise InputError(f"{where}: empty reasoning")
        if target not in catalog.item_of:
            raise InputError(f"{where}: target SID {target!r} is not in the sid_map catalog")
        for sid in history:
            if sid not in known:
                raise InputError(f"{where}: history SID {sid!r} is not in the sid_map")
        catalog.check_sids_in(text, where)
        if leaks.names_sid(text, target):
            raise InputError(f"{where}: the reasoning mentions the target SID {target} (it must not)")
        rows.append(ReasoningRow(list(history), text, target))
    if not rows:
        raise InputError(f"reasoning {uri}: no rows")
    return rows


# ----------------------------------------------------------------------------------------------
# codebooks and model folders
# ----------------------------------------------------------------------------------------------


def codebooks_sid_space(uri: str) -> str | None:
    """The SID-space fingerprint recorded in a codebooks folder's config."""
    try:
        config = storage.read_json(storage.join(uri, CODEBOOKS_CONFIG))
    except (storage.StorageError, json.JSONDecodeError) as exc:
        raise InputError(f"codebooks {uri}: no readable {CODEBOOKS_CONFIG} ({exc})") from None
    return config.get("sid_space")


@dataclass(frozen=True)
class ModelRecord:
    """What a trained model folder records about itself (``sidreasoner.json``)."""

    sid_space: str | None
    sid_map_digest: str | None
    stage: str


def write_model_record(folder: str, record: ModelRecord, tokens: Iterable[str]) -> None:
    """Write ``sid_vocab.json`` and ``sidreasoner.json`` into a local model folder."""
    storage.write_json(storage.join(folder, SID_VOCAB_FILE), sorted(set(tokens)))
    storage.write_json(storage.join(folder, MODEL_RECORD), vars(record))


def read_model_record(uri: str) -> ModelRecord | None:
    """A model folder's record; None for a folder no stage of this pipeline wrote (a backbone)."""
    path = storage.join(uri, MODEL_RECORD)
    if not storage.exists(path):
        return None
    try:
        return ModelRecord(**storage.read_json(path))
    except (TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"model {uri}: {MODEL_RECORD} is not a model record ({exc})") from None


def model_sid_vocabulary(uri: str, what: str = "model") -> set[str]:
    try:
        return set(storage.read_json(storage.join(uri, SID_VOCAB_FILE)))
    except storage.StorageError:
        raise InputError(f"{what} {uri}: no {SID_VOCAB_FILE} (not a model of this pipeline)") from None


def check_model_vocabulary(uri: str, catalog: Catalog, what: str = "model") -> None:
    """The model must know every SID token of the catalog (it was aligned on this sid_map)."""
    missing = sorted(set(catalog.tokens) - model_sid_vocabulary(uri, what))
    if missing:
        raise InputError(f"{what} {uri}: lacks {len(missing)} SID token(s) of the sid_map (e.g. {missing[:3]}); "
                         "was it trained on another sid_map?")


# ----------------------------------------------------------------------------------------------
# The SID space binding
# ----------------------------------------------------------------------------------------------


def sid_space_of(kind: str, uri: str) -> str | None:
    """The SID-space fingerprint an artifact records (None: it records none)."""
    if kind in ("sid_map", "corpus", "reasoning"):
        return schema_metadata(storage.read_parquet_schema(uri)).get(SID_SPACE_KEY)
    if kind == "codebooks":
        return codebooks_sid_space(uri)
    if kind == "model":
        record = read_model_record(uri)
        return record.sid_space if record else None
    return None


def check_same_sid_space(found: dict[str, tuple[str, str | None]]) -> None:
    """``found`` maps an artifact's name to (URI, fingerprint). Every recorded fingerprint must
    be the same; the first disagreement is an :class:`InputError` naming both artifacts."""
    known = [(name, uri, space) for name, (uri, space) in found.items() if space is not None]
    for name, uri, space in known[1:]:
        first, first_uri, first_space = known[0]
        if space != first_space:
            raise InputError(
                f"{name} {uri} is of SID space {space[:16]}, but {first} {first_uri} is of SID space "
                f"{first_space[:16]}: they come from different quantization runs (another sid_map or codebooks); "
                "use artifacts of one run")


# ----------------------------------------------------------------------------------------------
# Kinds: what the stage declarations name
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact as the DAG and the CLIs see it."""

    name: str
    kfp_type: str
    """``Dataset``, ``Model``, ``Artifact`` or ``HTML`` (a kfp.dsl artifact class name)."""
    file: str
    """File or folder name of this artifact under a CLI ``--out`` folder."""
    folder: bool = False
    parquet: pa.Schema | None = None
    """Columns every file of this kind has (checked before the stage starts)."""

    def check(self, uri: str, what: str) -> None:
        """Cheap pre-flight: it exists, is a file or a complete folder as it should be, and a
        Parquet artifact has its contract columns."""
        if not storage.exists(uri):
            raise InputError(f"input {what}: {uri} does not exist (or is not a complete {self.name} artifact)")
        if self.folder and not storage.is_dir(uri):
            raise InputError(f"input {what}: {uri} is a file; a {self.name} artifact is a folder")
        if not self.folder and storage.is_dir(uri):
            raise InputError(f"input {what}: {uri} is a folder; a {self.name} artifact is a file")
        if self.parquet is not None:
            schema = storage.read_parquet_schema(uri)
            require_columns(schema.empty_table(), self.parquet, f"input {what}", uri, allow_empty=True)


ITEMS = ArtifactKind("items", "Dataset", "items.parquet", parquet=ITEMS_SCHEMA)
SAMPLES = ArtifactKind("samples", "Dataset", "samples.parquet", parquet=SAMPLES_SCHEMA)
EMBEDDINGS = ArtifactKind("embeddings", "Dataset", "embeddings.parquet",
                          parquet=pa.schema([("item_id", pa.string())]))
SID_MAP = ArtifactKind("sid_map", "Dataset", "sid_map.parquet", parquet=SID_MAP_SCHEMA)
CODEBOOKS = ArtifactKind("codebooks", "Model", "codebooks", folder=True)
CORPUS = ArtifactKind("corpus", "Dataset", "corpus.parquet",
                      parquet=pa.schema([CORPUS_SCHEMA.field(n) for n in ("task", "loss", "messages", "text")]))
REASONING = ArtifactKind("reasoning", "Dataset", "reasoning.parquet", parquet=REASONING_SCHEMA)
MODEL = ArtifactKind("model", "Model", "model", folder=True)
RANKINGS = ArtifactKind("rankings", "Dataset", "rankings.parquet", parquet=RANKINGS_SCHEMA)
METRICS = ArtifactKind("metrics", "Dataset", "metrics.parquet", parquet=METRICS_SCHEMA)
PREDICTIONS = ArtifactKind("predictions", "Dataset", "predictions.parquet", parquet=PREDICTIONS_SCHEMA)
REPORT = ArtifactKind("report", "HTML", "report.html")
STATS = ArtifactKind("stats", "Artifact", "stats.json")
PREVIOUS = ArtifactKind("previous", "Artifact", "previous.json")
DECISION = ArtifactKind("decision", "Artifact", "decision.json")
