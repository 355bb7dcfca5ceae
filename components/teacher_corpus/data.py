"""The stage's inputs, read and checked: the catalog (items joined with their SIDs) and the TRAIN
samples. Valid and test samples are dropped here, on read, so nothing downstream can use them.

Errors name the artifact, the column and the row. The catalog is every non-retired row of the
SID map (``active`` and ``new``); their SIDs must be unique. A train sample that mentions a
retired item is dropped (its SID no longer names a catalog item) and counted; one that mentions
an item absent from the SID map is an error (the inputs do not belong together).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from components.common import storage
from components.common.sid import SidError, parse_sid

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_id", "title", "description", "brand", "categories")
SAMPLE_COLUMNS = ("user_id", "history", "target", "timestamp", "split")
SID_COLUMNS = ("item_id", "codes", "sid", "status")
SPLITS = ("train", "valid", "test")
STATUSES = ("active", "new", "retired")


class InputError(ValueError):
    """An input artifact is malformed; the message names the artifact, column and row."""


@dataclass(frozen=True)
class Item:
    """A catalog item with its SID."""

    item_id: str
    title: str
    description: str
    brand: str
    categories: tuple[str, ...]
    sid: str

    @property
    def category(self) -> str:
        """The most specific category ('' when none)."""
        return self.categories[-1] if self.categories else ""


@dataclass(frozen=True)
class Sample:
    """A train sample: history item ids (oldest first) and the target item id."""

    user_id: str
    history: tuple[str, ...]
    target: str
    timestamp: int


@dataclass
class Catalog:
    """Active items by id, their SIDs, and the SID length (levels)."""

    items: dict[str, Item]
    levels: int
    retired: frozenset[str]

    def __post_init__(self) -> None:
        self.sids = frozenset(item.sid for item in self.items.values())

    def sid(self, item_id: str) -> str:
        return self.items[item_id].sid


def _require(table: pa.Table, columns: tuple[str, ...], name: str, uri: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{name} ({uri}): missing column(s) {missing}; has {table.column_names}")
    if table.num_rows == 0:
        raise InputError(f"{name} ({uri}): no rows")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _check_strings(rows: list[dict[str, Any]], columns: tuple[str, ...], name: str) -> None:
    for i, row in enumerate(rows):
        for column in columns:
            value = row[column]
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{name} row {i}: {column} must be a non-empty string (got {value!r})")


def read_catalog(items_uri: str, sid_map_uri: str) -> Catalog:
    """Join items with the SID map's non-retired rows; check SIDs (well-formed, codes agree, unique)."""
    items_tbl = storage.read_parquet(items_uri)
    _require(items_tbl, ITEM_COLUMNS, "items", items_uri)
    sid_tbl = storage.read_parquet(sid_map_uri)
    _require(sid_tbl, SID_COLUMNS, "sid_map", sid_map_uri)

    items_rows = items_tbl.select(list(ITEM_COLUMNS)).to_pylist()
    _check_strings(items_rows, ("item_id", "title"), f"items ({items_uri})")
    meta: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(items_rows):
        if row["item_id"] in meta:
            raise InputError(f"items ({items_uri}) row {i}: duplicate item_id {row['item_id']!r}")
        meta[row["item_id"]] = row

    sid_rows = sid_tbl.select(list(SID_COLUMNS)).to_pylist()
    _check_strings(sid_rows, ("item_id", "sid", "status"), f"sid_map ({sid_map_uri})")
    seen: set[str] = set()
    by_sid: dict[str, str] = {}
    active: dict[str, Item] = {}
    retired: set[str] = set()
    levels = None
    for i, row in enumerate(sid_rows):
        where = f"sid_map ({sid_map_uri}) row {i} (item {row['item_id']!r})"
        if row["item_id"] in seen:
            raise InputError(f"{where}: duplicate item_id")
        seen.add(row["item_id"])
        if row["status"] not in STATUSES:
            raise InputError(f"{where}: status must be one of {list(STATUSES)} (got {row['status']!r})")
        try:
            codes = parse_sid(row["sid"])
        except SidError as exc:
            raise InputError(f"{where}: {exc}") from None
        if row["codes"] is None or list(row["codes"]) != list(codes):
            raise InputError(f"{where}: codes {row['codes']} do not match sid {row['sid']!r}")
        if levels is None:
            levels = len(codes)
        elif len(codes) != levels:
            raise InputError(f"{where}: sid {row['sid']!r} has {len(codes)} levels, earlier rows {levels}")
        if row["status"] == "retired":
            retired.add(row["item_id"])
            continue
        if row["sid"] in by_sid:
            raise InputError(f"{where}: sid {row['sid']!r} is also the sid of item {by_sid[row['sid']]!r} "
                             "(catalog SIDs must be unique)")
        by_sid[row["sid"]] = row["item_id"]
        info = meta.get(row["item_id"])
        if info is None:
            raise InputError(f"{where}: item has a SID but no row in items ({items_uri})")
        categories = info["categories"] or []
        active[row["item_id"]] = Item(
            item_id=row["item_id"], title=info["title"].strip(), description=_text(info["description"]).strip(),
            brand=_text(info["brand"]).strip(), categories=tuple(str(c) for c in categories if c),
            sid=row["sid"])
    if not active:
        raise InputError(f"sid_map ({sid_map_uri}): no active or new item (all {len(sid_rows)} rows are retired)")
    return Catalog(items=active, levels=levels, retired=frozenset(retired))


def read_train_samples(samples_uri: str, catalog: Catalog) -> tuple[list[Sample], dict[str, int]]:
    """The TRAIN samples whose items are all in the catalog, and what was dropped.

    Rows of other splits are discarded right after reading, before any other use.
    """
    table = storage.read_parquet(samples_uri)
    _require(table, SAMPLE_COLUMNS, "samples", samples_uri)
    splits = set(pc.unique(table["split"]).to_pylist())
    if not splits <= set(SPLITS):
        raise InputError(f"samples ({samples_uri}): split must be one of {list(SPLITS)} "
                         f"(found {sorted(map(str, splits - set(SPLITS)))})")
    counts = {split: int(pc.sum(pc.equal(table["split"], split)).as_py() or 0) for split in SPLITS}
    train = table.filter(pc.equal(table["split"], "train")).select(["user_id", "history", "target", "timestamp"])
    if train.num_rows == 0:
        raise InputError(f"samples ({samples_uri}): no train samples (splits: {counts})")
    samples, dropped_retired = [], 0
    for i, row in enumerate(train.to_pylist()):
        where = f"samples ({samples_uri}) train row {i}"
        if not isinstance(row["user_id"], str) or not row["user_id"]:
            raise InputError(f"{where}: user_id must be a non-empty string (got {row['user_id']!r})")
        if not isinstance(row["target"], str) or not row["target"]:
            raise InputError(f"{where}: target must be a non-empty string (got {row['target']!r})")
        history = row["history"]
        if not history or any(not isinstance(h, str) or not h for h in history):
            raise InputError(f"{where}: history must be a non-empty list of item ids (got {history!r})")
        if row["timestamp"] is None:
            raise InputError(f"{where}: timestamp is null")
        ids = [*history, row["target"]]
        unknown = [x for x in ids if x not in catalog.items and x not in catalog.retired]
        if unknown:
            raise InputError(f"{where}: item(s) {unknown[:5]} are not in the sid_map")
        if any(x in catalog.retired for x in ids):
            dropped_retired += 1
            continue
        samples.append(Sample(row["user_id"], tuple(history), row["target"], int(row["timestamp"])))
    if not samples:
        raise InputError(f"samples ({samples_uri}): every train sample mentions a retired item")
    if dropped_retired:
        log.warning("dropped %d train sample(s) that mention retired items", dropped_retired)
    return samples, {"samples_by_split": counts, "train_used": len(samples),
                     "train_dropped_retired_item": dropped_retired}
