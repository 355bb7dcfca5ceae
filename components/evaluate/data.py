"""The evaluation's inputs, validated: the catalog (SID map + item titles) and the rows to score.

Everything here fails with a message naming the artifact, and the row or column, before any
model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from components.common import sid as sid_codec

log = logging.getLogger(__name__)

SID_MAP_COLUMNS = ("item_id", "codes", "sid", "status")
ITEMS_COLUMNS = ("item_id", "title")
SAMPLES_COLUMNS = ("user_id", "history", "target", "timestamp", "split")
STATUSES = {"active", "new", "retired"}
SPLITS = ("train", "valid", "test")


class EvaluationInputError(ValueError):
    """An input artifact cannot be evaluated (missing columns, empty split, broken SID map...)."""


@dataclass
class Catalog:
    """The items a model can recommend: every non-retired SID map row, with its unique SID."""

    item_ids: list[str]
    """Catalog item ids, in SID map order."""
    sids: list[str]
    """Their SIDs (same order)."""
    sid_to_item: dict[str, str]
    """Catalog SID -> its one item (the per-item scoring map)."""
    item_sid: dict[str, str]
    """Every SID map item (retired too: they still appear in histories) -> SID."""
    titles: dict[str, str]
    """Item id -> title (from items)."""
    levels: int

    def title(self, item_id: str) -> str:
        return self.titles.get(item_id, f"(item {item_id})")


def _require(table: pa.Table, columns: Sequence[str], name: str, uri: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise EvaluationInputError(f"{name} ({uri}): missing column(s) {missing}; has {table.column_names}")


def _null_rows(df: pd.DataFrame, column: str) -> list[int]:
    return [int(i) for i in np.flatnonzero(df[column].isna().to_numpy())]


def load_catalog(sid_map: pa.Table, items: pa.Table, sid_map_uri: str, items_uri: str) -> Catalog:
    """Validate the SID map against the contract and build the catalog."""
    _require(sid_map, SID_MAP_COLUMNS, "sid_map", sid_map_uri)
    _require(items, ITEMS_COLUMNS, "items", items_uri)
    df = sid_map.select(list(SID_MAP_COLUMNS)).to_pandas()
    if df.empty:
        raise EvaluationInputError(f"sid_map ({sid_map_uri}) is empty")
    for column in ("item_id", "sid", "status"):
        bad = _null_rows(df, column)
        if bad:
            raise EvaluationInputError(f"sid_map ({sid_map_uri}) row {bad[0]}: null {column} ({len(bad)} rows)")
    unknown = sorted(set(df["status"]) - STATUSES)
    if unknown:
        row = int(np.flatnonzero(df["status"].isin(unknown).to_numpy())[0])
        raise EvaluationInputError(f"sid_map ({sid_map_uri}) row {row}: status {unknown[0]!r} is not one of "
                                   f"{sorted(STATUSES)}")
    dup_items = df["item_id"][df["item_id"].duplicated()]
    if len(dup_items):
        raise EvaluationInputError(f"sid_map ({sid_map_uri}): item {dup_items.iloc[0]!r} has several rows")
    levels = set()
    for row, (item, codes, sid) in enumerate(zip(df["item_id"], df["codes"], df["sid"])):
        try:
            parsed = sid_codec.parse_sid(sid)
        except sid_codec.SidError as exc:
            raise EvaluationInputError(f"sid_map ({sid_map_uri}) row {row} (item {item}): {exc}") from None
        if codes is None or tuple(int(c) for c in codes) != parsed:
            raise EvaluationInputError(f"sid_map ({sid_map_uri}) row {row} (item {item}): codes {codes} do not "
                                       f"match sid {sid}")
        levels.add(len(parsed))
    if len(levels) != 1:
        raise EvaluationInputError(f"sid_map ({sid_map_uri}): SIDs with different numbers of levels {sorted(levels)}")
    live = df[df["status"] != "retired"]
    if live.empty:
        raise EvaluationInputError(f"sid_map ({sid_map_uri}): every item is retired; nothing to recommend")
    collided = live["sid"][live["sid"].duplicated(keep=False)]
    if len(collided):
        shared = collided.iloc[0]
        owners = live["item_id"][live["sid"] == shared].tolist()
        raise EvaluationInputError(
            f"sid_map ({sid_map_uri}): SID {shared} is shared by items {owners[:5]} ({collided.nunique()} SIDs "
            "collide); metrics are per item, so every catalog item needs its own SID")
    titles_df = items.select(["item_id", "title"]).to_pandas()
    titles = dict(zip(titles_df["item_id"].astype(str), titles_df["title"].fillna("").astype(str)))
    untitled = [i for i in live["item_id"] if i not in titles]
    if untitled:
        log.warning("%d catalog items are not in items (%s), e.g. %s; shown by id", len(untitled), items_uri,
                    untitled[:3])
    return Catalog(
        item_ids=live["item_id"].astype(str).tolist(), sids=live["sid"].astype(str).tolist(),
        sid_to_item=dict(zip(live["sid"], live["item_id"])), item_sid=dict(zip(df["item_id"], df["sid"])),
        titles=titles, levels=levels.pop(),
    )


def load_samples(samples: pa.Table, uri: str) -> pd.DataFrame:
    """The samples table as a DataFrame with a ``row`` column (its position in the file)."""
    _require(samples, SAMPLES_COLUMNS, "samples", uri)
    df = samples.select(list(SAMPLES_COLUMNS)).to_pandas()
    for column in ("user_id", "target", "split", "history"):
        bad = _null_rows(df, column)
        if bad:
            raise EvaluationInputError(f"samples ({uri}) row {bad[0]}: null {column} ({len(bad)} rows)")
    unknown = sorted(set(df["split"]) - set(SPLITS))
    if unknown:
        raise EvaluationInputError(f"samples ({uri}): unknown split(s) {unknown}; expected {list(SPLITS)}")
    df["history"] = [list(map(str, h)) for h in df["history"]]
    df.insert(0, "row", np.arange(len(df)))
    return df


def select_rows(samples: pd.DataFrame, splits: Sequence[str], max_examples: int | None, seed: int,
                catalog: Catalog, uri: str) -> pd.DataFrame:
    """The rows to score: every row of ``splits`` (or a seeded subset of ``max_examples`` per
    split, kept in file order), each history fully mapped to SIDs."""
    counts = samples["split"].value_counts().to_dict()
    parts = []
    for split in splits:
        rows = samples[samples["split"] == split]
        if rows.empty:
            raise EvaluationInputError(f"samples ({uri}): the {split!r} split is empty (rows per split: "
                                       f"{ {s: int(counts.get(s, 0)) for s in SPLITS} }); nothing to evaluate")
        if max_examples is not None and len(rows) > max_examples:
            rng = np.random.default_rng(seed)
            rows = rows.iloc[np.sort(rng.choice(len(rows), size=max_examples, replace=False))]
        parts.append(rows)
    selected = pd.concat(parts, ignore_index=True)
    for row, history in zip(selected["row"], selected["history"]):
        if not history:
            raise EvaluationInputError(f"samples ({uri}) row {row}: empty history (the prompt needs at least one item)")
        missing = [i for i in history if i not in catalog.item_sid]
        if missing:
            raise EvaluationInputError(f"samples ({uri}) row {row}: history item(s) {missing[:3]} have no SID in "
                                       "the sid_map")
    outside = int((~selected["target"].isin(set(catalog.item_ids))).sum())
    if outside:
        log.warning("%d evaluated targets are not in the catalog (retired or unknown): they count as misses",
                    outside)
    return selected.reset_index(drop=True)
