"""Readers of the four input formats into canonical frames.

Raw formats (amazon18, amazon23, parquet) produce an item table and an interaction table
(user_id, item_id, timestamp) that :mod:`components.ingest.preprocess` turns into samples.
The release format is already preprocessed: it yields samples directly.

Canonical items: item_id, title, description, brand, categories (list of str); ids are strings.
Every error names the file, and the line or row, that caused it.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import html
import io
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.common import storage
from components.common.logs import Progress
from components.ingest.config import OPTIONAL_FILES, IngestConfig

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["item_id", "title", "description", "brand", "categories"]
SPLITS = ("train", "valid", "test")


class IngestError(ValueError):
    """Bad input data; the message names the file and the line, row or column."""


@dataclass
class RawCatalog:
    """What a reader produces. ``samples`` is set only by the release format."""

    items: pd.DataFrame
    interactions: pd.DataFrame | None
    samples: pd.DataFrame | None = None
    sources: dict[str, str] = field(default_factory=dict)
    """Role -> URI of every file read (for lineage)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Format-specific facts for the stats (missing splits, timestamp kind, ...)."""


# ----------------------------------------------------------------------------------------------
# Text cleaning
# ----------------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]+>")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SPACE = re.compile(r"\s+")


def clean_text(value: Any, max_chars: int | None = None) -> str:
    """Unescape HTML entities, drop tags/comments, join lists, collapse whitespace."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        value = " ".join(clean_text(v) for v in value)
    text = str(value)
    if text.startswith("[") and text.endswith("]"):  # a Python-literal list inside a string
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = ast.literal_eval(text)
            if isinstance(parsed, list):
                text = " ".join(str(v) for v in parsed)
    text = _COMMENT.sub(" ", html.unescape(text))
    text = _SPACE.sub(" ", _TAG.sub(" ", text)).strip()
    return text[:max_chars] if max_chars else text


def clean_title(value: Any) -> str:
    """Titles keep markup so that the '<span id' rule can see it; only entities are unescaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return _SPACE.sub(" ", html.unescape(str(value))).strip()


def to_categories(value: Any) -> list[str]:
    """Categories as a list of clean strings, from a list, a list literal or a '|'-joined string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        text = str(value).strip()
        if not text:
            return []
        items = None
        if text.startswith("["):
            with contextlib.suppress(ValueError, SyntaxError):
                parsed = ast.literal_eval(text)
                if isinstance(parsed, list):
                    items = parsed
        if items is None:
            items = text.split("|")
    flat: list[str] = []
    for item in items:  # amazon18 nests lists of category paths in some categories
        flat.extend(to_categories(item) if isinstance(item, (list, tuple)) else [clean_text(item)])
    return [c for c in flat if c]


# ----------------------------------------------------------------------------------------------
# File access
# ----------------------------------------------------------------------------------------------


def resolve_files(cfg: IngestConfig) -> dict[str, str]:
    """Role -> URI for each file present; a missing required file is an error."""
    found: dict[str, str] = {}
    for role, name in cfg.file_roles().items():
        uri = storage.join(cfg.source, name)
        if storage.exists(uri):
            found[role] = uri
        elif role not in OPTIONAL_FILES[cfg.format]:
            raise IngestError(f"missing input file for ingest.files.{role}: {uri}")
    return found


def iter_json_lines(uri: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) from a JSON-lines file, gzipped or not, local or gs://."""
    name = Path(storage.split_gcs(uri)[1] if storage.is_gcs(uri) else uri).name
    with storage.local_copy(uri) as path:
        size = path.stat().st_size
        progress = Progress(log, f"reading {name}", total=size, unit="bytes")
        with open(path, "rb") as raw:
            stream = gzip.open(raw) if _is_gzip(path) else raw
            reader = io.TextIOWrapper(stream, encoding="utf-8")
            last = 0
            for line_no, line in enumerate(reader, start=1):
                if line_no % 20000 == 0:
                    progress.update(raw.tell() - last)
                    last = raw.tell()
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise IngestError(f"{uri} line {line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise IngestError(f"{uri} line {line_no}: expected a JSON object, got {type(obj).__name__}")
                yield line_no, obj
            progress.update(size - last)
        progress.close()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _require(obj: dict[str, Any], key: str, uri: str, line_no: int) -> Any:
    if key not in obj or obj[key] is None:
        raise IngestError(f"{uri} line {line_no}: missing field '{key}'")
    return obj[key]


def _timestamp(value: Any, uri: str, line_no: int, key: str, divisor: int = 1) -> int:
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise IngestError(f"{uri} line {line_no}: {key} {value!r} is not a unix timestamp")
    return int(number) // divisor


def _check_unique(ids: list[str], where: list[int], uri: str) -> None:
    seen: dict[str, int] = {}
    for item_id, line_no in zip(ids, where):
        if item_id in seen:
            raise IngestError(f"{uri}: duplicate item id {item_id!r} at lines {seen[item_id]} and {line_no}")
        seen[item_id] = line_no


# ----------------------------------------------------------------------------------------------
# Amazon Reviews 2018 / 2023 raw
# ----------------------------------------------------------------------------------------------


def _read_amazon(cfg: IngestConfig, files: dict[str, str], *, id_keys: tuple[str, ...],
                 user_key: str, time_key: str, time_divisor: int) -> RawCatalog:
    max_chars = cfg.preprocess.description_max_chars
    meta_uri = files["meta"]
    rows, lines = [], []
    for line_no, obj in iter_json_lines(meta_uri):
        item_id = next((obj[k] for k in id_keys if obj.get(k)), None)
        if item_id is None:
            raise IngestError(f"{meta_uri} line {line_no}: missing field '{id_keys[0]}'")
        brand = obj.get("brand") or obj.get("store") or (obj.get("details") or {}).get("Brand", "")
        rows.append({
            "item_id": str(item_id),
            "title": clean_title(obj.get("title")),
            "description": clean_text(obj.get("description"), max_chars),
            "brand": clean_text(brand),
            "categories": to_categories(obj.get("category", obj.get("categories"))),
        })
        lines.append(line_no)
    _check_unique([r["item_id"] for r in rows], lines, meta_uri)
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)

    reviews_uri = files["reviews"]
    users, item_ids, times = [], [], []
    for line_no, obj in iter_json_lines(reviews_uri):
        item_id = next((obj[k] for k in id_keys if obj.get(k)), None)
        if item_id is None:
            raise IngestError(f"{reviews_uri} line {line_no}: missing field '{id_keys[0]}'")
        users.append(str(_require(obj, user_key, reviews_uri, line_no)))
        item_ids.append(str(item_id))
        times.append(_timestamp(_require(obj, time_key, reviews_uri, line_no), reviews_uri, line_no,
                                time_key, time_divisor))
    interactions = pd.DataFrame({"user_id": users, "item_id": item_ids,
                                 "timestamp": np.asarray(times, dtype=np.int64)})
    return RawCatalog(items=items, interactions=interactions, sources=files)


def read_amazon18(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Amazon 2018: meta {asin, title, description[], brand, category[]}, reviews {reviewerID,
    asin, unixReviewTime (s)}."""
    return _read_amazon(cfg, files, id_keys=("asin",), user_key="reviewerID",
                        time_key="unixReviewTime", time_divisor=1)


def read_amazon23(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Amazon 2023: items keyed by parent_asin, brand from store; reviews {user_id, parent_asin,
    timestamp (ms)}."""
    return _read_amazon(cfg, files, id_keys=("parent_asin", "asin"), user_key="user_id",
                        time_key="timestamp", time_divisor=1000)


# ----------------------------------------------------------------------------------------------
# Generic Parquet
# ----------------------------------------------------------------------------------------------


def _read_table(uri: str, role: str, required: list[str], optional: list[str],
                columns: dict[str, str]) -> pd.DataFrame:
    table = storage.read_parquet(uri)
    present = set(table.column_names)
    rename: dict[str, str] = {}
    for canonical in required + optional:
        source = columns.get(canonical, canonical)
        if source in present:
            rename[source] = canonical
        elif canonical in required:
            raise IngestError(
                f"{uri}: missing column '{source}' ({role}.{canonical}); found {sorted(present)}. "
                f"Map it with --set ingest.columns.{canonical}=<column>"
            )
    return table.select(list(rename)).to_pandas().rename(columns=rename)


def _parquet_timestamps(values: pd.Series, uri: str, unit: str) -> np.ndarray:
    """Timestamps as int64 unix seconds from numbers (s or ms), datetimes or date strings."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=float)
        bad = ~np.isfinite(numbers)
        if bad.any():
            raise IngestError(f"{uri}: column timestamp has {int(bad.sum())} NaN/null value(s) "
                              f"(first at row {int(np.flatnonzero(bad)[0])})")
        return (numbers // (1000 if unit == "ms" else 1)).astype(np.int64)
    stamps = pd.to_datetime(values, errors="coerce", utc=True)
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise IngestError(f"{uri}: column timestamp row {row}: {values.iloc[row]!r} is not a "
                          f"timestamp ({int(bad.sum())} bad value(s))")
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def read_parquet_source(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Platform export: interactions(user_id, item_id, timestamp) + items(item_id, text fields)."""
    max_chars = cfg.preprocess.description_max_chars
    items_uri, inter_uri = files["items"], files["interactions"]
    items = _read_table(items_uri, "items", ["item_id", "title"],
                        ["description", "brand", "categories"], cfg.columns)
    items["item_id"] = items["item_id"].astype(str)
    dup = items["item_id"].duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:2].tolist()
        raise IngestError(f"{items_uri}: duplicate item id {items['item_id'].iloc[rows[0]]!r} "
                          f"at rows {rows[0]} and {rows[1]}")
    out = pd.DataFrame({
        "item_id": items["item_id"],
        "title": items["title"].map(clean_title),
        "description": items.get("description", pd.Series([""] * len(items))).map(
            lambda v: clean_text(v, max_chars)),
        "brand": items.get("brand", pd.Series([""] * len(items))).map(clean_text),
        "categories": items.get("categories", pd.Series([None] * len(items))).map(to_categories),
    })
    _require_titles(out, items_uri)
    inter = _read_table(inter_uri, "interactions", ["user_id", "item_id", "timestamp"], [], cfg.columns)
    for column in ("user_id", "item_id"):
        if inter[column].isna().any():
            row = int(np.flatnonzero(inter[column].isna().to_numpy())[0])
            raise IngestError(f"{inter_uri}: column {column} is null at row {row}")
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].astype(str),
        "item_id": inter["item_id"].astype(str),
        "timestamp": _parquet_timestamps(inter["timestamp"], inter_uri, cfg.timestamp_unit),
    })
    return RawCatalog(items=out, interactions=interactions, sources=files)


def _require_titles(items: pd.DataFrame, uri: str) -> None:
    empty = items["title"].str.len() == 0
    if empty.any():
        ids = items.loc[empty, "item_id"].head(3).tolist()
        raise IngestError(f"{uri}: {int(empty.sum())} item(s) with an empty title, e.g. {ids}")


# ----------------------------------------------------------------------------------------------
# MiniOneRec / SIDReasoner processed release
# ----------------------------------------------------------------------------------------------


def _read_release_items(uri: str, max_chars: int) -> pd.DataFrame:
    try:
        data = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise IngestError(f"{uri} line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise IngestError(f"{uri}: expected an object {{item_id: {{title, ...}}}}")
    rows = []
    for item_id, meta in data.items():
        if not isinstance(meta, dict):
            raise IngestError(f"{uri}: item {item_id!r} is not an object")
        rows.append({
            "item_id": str(item_id),
            "title": clean_title(meta.get("title")),
            "description": clean_text(meta.get("description"), max_chars),
            "brand": clean_text(meta.get("brand")),
            "categories": to_categories(meta.get("categories")),
        })
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    _require_titles(items, uri)
    return items


def _parse_id_list(text: Any, uri: str, line_no: int, column: str) -> list[str]:
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        raise IngestError(f"{uri} line {line_no}: column {column} is not a list literal: {str(text)[:80]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise IngestError(f"{uri} line {line_no}: column {column} is not a list: {str(text)[:80]!r}")
    return [str(v) for v in value]


def read_release(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Processed release: ``item.json`` + CSV splits (+ optional ``index.json`` of upstream SIDs).

    The CSVs carry no timestamps; rows are in time order within and across splits
    (train < valid < test), so ``timestamp`` is that global row ordinal (``timestamp_kind:
    ordinal`` in the stats).
    """
    items = _read_release_items(files["items"], cfg.preprocess.description_max_chars)
    if "index" in files:
        index = storage.read_json(files["index"])
        items["upstream_sid"] = items["item_id"].map(lambda i: "".join(index.get(i, [])))
    known = set(items["item_id"])
    present = [s for s in SPLITS if s in files]
    if not present:
        raise IngestError(f"{cfg.source}: no split file found (looked for "
                          f"{[cfg.file_roles()[s] for s in SPLITS]})")
    missing = [s for s in SPLITS if s not in files]
    if missing:
        log.warning("release pack %s has no %s split(s)%s", cfg.source, missing,
                    "; re-splitting chronologically (ingest.resplit)" if cfg.resplit else "")
    frames = []
    for split in present:
        uri = files[split]
        with storage.local_copy(uri) as path:
            try:
                df = pd.read_csv(path, dtype=str, keep_default_na=False)
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise IngestError(f"{uri}: malformed CSV: {exc}") from None
        for column in ("user_id", "history_item_id", "item_id"):
            if column not in df.columns:
                raise IngestError(f"{uri}: missing column '{column}'; found {list(df.columns)}")
        histories = []
        for offset, (text, target, user) in enumerate(zip(df["history_item_id"], df["item_id"], df["user_id"])):
            line_no = offset + 2  # header is line 1
            history = _parse_id_list(text, uri, line_no, "history_item_id")
            for item_id in [*history, target]:
                if item_id not in known:
                    raise IngestError(f"{uri} line {line_no}: item {item_id!r} is not in {files['items']}")
            if not user:
                raise IngestError(f"{uri} line {line_no}: empty user_id")
            histories.append(history[-cfg.preprocess.max_history:])
        frames.append(pd.DataFrame({"user_id": df["user_id"], "history": histories,
                                    "target": df["item_id"].astype(str), "split": split}))
    samples = pd.concat(frames, ignore_index=True)
    samples["timestamp"] = np.arange(len(samples), dtype=np.int64)
    return RawCatalog(items=items, interactions=None, samples=samples, sources=files,
                      notes={"timestamp_kind": "ordinal", "missing_splits": missing})


READERS = {
    "amazon18": read_amazon18,
    "amazon23": read_amazon23,
    "parquet": read_parquet_source,
    "release": read_release,
}


def read_catalog(cfg: IngestConfig) -> RawCatalog:
    files = resolve_files(cfg)
    return READERS[cfg.format](cfg, files)

