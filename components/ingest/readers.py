"""Readers of the four input formats into canonical frames.

Raw formats (amazon18, amazon23, parquet) produce an item table and an interaction table
(user_id, item_id, timestamp) that :mod:`components.ingest.preprocess` turns into samples.
The release format is already preprocessed: it yields samples directly.

Canonical items: item_id, title, description, brand, categories (list of str); ids are strings.
Every error is an :class:`~components.common.errors.InputError` naming the file, and the line,
byte offset, row or column, that caused it. Beyond parsing, the readers check what a parser
cannot see: timestamps that are not plausible dates (a wrong unit), and interactions naming items
the catalog lacks (files that do not belong together, ids written differently in each).
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import gzip
import html
import io
import json
import logging
import math
import re
import zlib
from codecs import BOM_UTF8
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from components.common import storage
from components.common.errors import InputError
from components.common.logs import Progress
from components.ingest.config import OPTIONAL_FILES, TIME_UNITS, IngestConfig

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["item_id", "title", "description", "brand", "categories"]
SPLITS = ("train", "valid", "test")


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
# File access and decoding
# ----------------------------------------------------------------------------------------------


def resolve_files(cfg: IngestConfig) -> dict[str, str]:
    """Role -> URI for each file present; a missing required file is an error."""
    found: dict[str, str] = {}
    for role, name in cfg.file_roles().items():
        uri = storage.join(cfg.source, name)
        if storage.exists(uri):
            found[role] = uri
        elif role not in OPTIONAL_FILES[cfg.format]:
            raise InputError(f"missing input file for ingest.files.{role}: {uri}")
    return found


def _read_bytes(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except OSError as exc:
        raise InputError(f"{uri}: cannot read ({exc.strerror or exc})") from None


def _not_utf8(uri: str, line_no: int, column: int, offset: int, byte: int, decompressed: bool = False) -> str:
    data = " of the decompressed data" if decompressed else ""
    return (f"{uri} line {line_no}: byte 0x{byte:02x} at offset {offset}{data} (column {column + 1}) is not "
            "UTF-8; re-encode the file as UTF-8")


def _decode(data: bytes, uri: str) -> str:
    """A whole file as UTF-8 text (a leading byte-order mark dropped)."""
    start = len(BOM_UTF8) if data.startswith(BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line_start = data.rfind(b"\n", 0, offset) + 1
        raise InputError(_not_utf8(uri, data.count(b"\n", 0, offset) + 1, offset - line_start, offset,
                                   data[offset])) from None


def _json_type(value: Any) -> str:
    """``value``'s JSON type, for messages: 'a number', 'an array', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in ((str, "a string"), ((int, float), "a number"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def iter_json_lines(uri: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) from a JSON-lines file, gzipped or not, local or gs://."""
    name = Path(storage.split_gcs(uri)[1] if storage.is_gcs(uri) else uri).name
    with storage.local_copy(uri) as path:
        size = path.stat().st_size
        progress = Progress(log, f"reading {name}", total=size, unit="bytes")
        line_no = 0
        offset = 0  # bytes (decompressed) before the current line, to name a bad byte's position
        try:
            with open(path, "rb") as raw:
                gzipped = raw.read(2) == b"\x1f\x8b"
                raw.seek(0)
                stream = gzip.open(raw) if gzipped else raw
                last = 0
                for line_no, line in enumerate(stream, start=1):
                    if line_no % 20000 == 0:
                        progress.update(raw.tell() - last)
                        last = raw.tell()
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise InputError(_not_utf8(uri, line_no, exc.start, offset + exc.start, line[exc.start],
                                                   decompressed=gzipped)) from None
                    offset += len(line)
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{uri} line {line_no}: malformed JSON ({exc.msg} at column "
                                         f"{exc.colno})") from None
                    if not isinstance(obj, dict):
                        raise InputError(f"{uri} line {line_no}: expected a JSON object, got {_json_type(obj)}")
                    yield line_no, obj
                progress.update(size - last)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputError(f"{uri}: truncated or corrupt gzip data after line {line_no} ({exc}); "
                             "copy or download the file again") from None
        except OSError as exc:
            raise InputError(f"{uri}: cannot read ({exc.strerror or exc})") from None
        progress.close()


def _require(obj: dict[str, Any], key: str, uri: str, line_no: int) -> Any:
    if key not in obj or obj[key] is None:
        raise InputError(f"{uri} line {line_no}: missing field '{key}'")
    return obj[key]


def _scalar_id(value: Any, key: str, uri: str, line_no: int) -> str:
    """An id field as a string; ids are strings (numbers are accepted and written as text)."""
    if type(value) is str:  # nearly always: one check on the hot path
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{uri} line {line_no}: field '{key}' is {_json_type(value)}, expected a string id")
    return str(value)


def _timestamp(value: Any, uri: str, line_no: int, key: str) -> int:
    """A raw numeric timestamp (any unit) as an int; its plausibility is checked for the whole file."""
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not 0 <= number < MAX_TIMESTAMP:
        raise InputError(f"{uri} line {line_no}: {key} {value!r} is not a unix timestamp")
    return int(number)


def _check_unique(ids: list[str], where: list[int], uri: str) -> None:
    seen: dict[str, int] = {}
    for item_id, line_no in zip(ids, where):
        if item_id in seen:
            raise InputError(f"{uri}: duplicate item id {item_id!r} at lines {seen[item_id]} and {line_no}")
        seen[item_id] = line_no


# ----------------------------------------------------------------------------------------------
# Timestamps: plausible dates, whatever the unit
# ----------------------------------------------------------------------------------------------

#: Interaction logs start after this (Amazon's first reviews are from 1995): an earlier date is a
#: unit mistake (seconds read as milliseconds land in January 1970) or a placeholder such as 0.
EARLIEST_PLAUSIBLE = dt.datetime(1990, 1, 1, tzinfo=dt.timezone.utc)
#: How far past today a timestamp may lie (clocks, time zones); milliseconds read as seconds lie
#: tens of thousands of years ahead.
FUTURE_SLACK = dt.timedelta(days=2)
#: Larger raw values are no timestamp in any unit (and would overflow int64 arithmetic).
MAX_TIMESTAMP = 2**62
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _plausible_range() -> tuple[int, int]:
    latest = dt.datetime.now(dt.timezone.utc) + FUTURE_SLACK
    return int(EARLIEST_PLAUSIBLE.timestamp()), int(latest.timestamp())


def iso_day(seconds: float) -> str:
    """A unix time as its UTC date, e.g. 2017-07-14 (or the year, when past 9999)."""
    try:
        return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return f"year ~{1970 + int(seconds) // 31_556_952}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _in_unit(raw: np.ndarray, unit: str) -> np.ndarray:
    return np.clip(np.floor_divide(raw, TIME_UNITS[unit]), -MAX_TIMESTAMP, MAX_TIMESTAMP).astype(np.int64)


def require_plausible(seconds: np.ndarray, uri: str, column: str, where: Callable[[int], str], *,
                      raw: np.ndarray | None = None, unit: str | None = None) -> None:
    """Every timestamp must be a date between 1990 and the day after tomorrow.

    ``raw`` and ``unit``: the numbers as read and the unit they were read in; when every value
    would be plausible in another unit, the error says which one to configure.
    """
    low, high = _plausible_range()
    bad = (seconds < low) | (seconds > high)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    shown = column if raw is None else f"{column} {_number(raw[first])} read as {UNIT_NAMES[unit]}"
    message = (f"{uri} {where(first)}: {shown} is {iso_day(seconds[first])}, not a plausible date "
               f"({int(bad.sum()):,} of {len(seconds):,} values fall outside {iso_day(low)}..{iso_day(high)})")
    if raw is not None:
        for other in TIME_UNITS:
            converted = _in_unit(raw, other)
            if other != unit and ((converted >= low) & (converted <= high)).all():
                message += (f"; as {UNIT_NAMES[other]} they span {iso_day(converted.min())}.."
                            f"{iso_day(converted.max())}: set ingest.timestamp_unit={other}")
                break
    raise InputError(message)


def unix_seconds(raw: np.ndarray, unit: str, uri: str, column: str, where: Callable[[int], str]) -> np.ndarray:
    """Numeric timestamps in ``unit`` as int64 unix seconds, each a plausible date."""
    seconds = _in_unit(raw, unit)
    require_plausible(seconds, uri, column, where, raw=raw, unit=unit)
    return seconds


# ----------------------------------------------------------------------------------------------
# Do the interactions and the catalog belong together?
# ----------------------------------------------------------------------------------------------


def _as_number(item_id: str) -> str:
    """'1.0', '01' and '1' alike as '1' (ids written by a float or zero-padded column)."""
    try:
        number = float(item_id)
    except ValueError:
        return item_id
    return str(int(number)) if number.is_integer() else str(number)


#: Ways the same id is commonly written differently by two exports.
_ID_SPELLINGS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("surrounding whitespace", str.strip),
    ("letter case", str.casefold),
    ("number formatting", _as_number),
)


def _id_mismatch(item_ids: pd.Series, unknown: pd.Series, items_uri: str, inter_uri: str,
                 id_types: tuple[str, str] | None) -> str | None:
    """Why ids in the interactions miss the catalog, when they differ only in how they are written."""
    types, advice = "", "Write item_id the same way in both files"
    if id_types and id_types[0] != id_types[1]:
        types = f"item_id is {id_types[1]} in {inter_uri} but {id_types[0]} in {items_uri}; "
        advice = "Write item_id with the same type in both files"
    sample = unknown.drop_duplicates().head(1000)
    for what, spell in _ID_SPELLINGS:
        catalog = {spell(i): i for i in item_ids}
        for item_id in sample:
            match = catalog.get(spell(item_id))
            if match is not None:
                return (f"{types}the ids differ in {what}: {item_id!r} in {inter_uri} is {match!r} in "
                        f"{items_uri}. {advice}")
    return f"{types}{advice}" if types else None


def check_id_overlap(item_ids: pd.Series, inter_ids: pd.Series, items_uri: str, inter_uri: str,
                     max_share: float, id_types: tuple[str, str] | None = None) -> dict[str, int]:
    """Interactions naming items absent from the catalog are dropped with a warning; past
    ``max_share`` of them (or all of them) the two files do not belong together: an error.
    Returns the count for the stats."""
    unknown = ~inter_ids.isin(set(item_ids))
    n_unknown, total = int(unknown.sum()), len(inter_ids)
    if n_unknown == 0:
        return {"interactions_unknown_item": 0}
    share = n_unknown / total
    example = inter_ids[unknown].iloc[0]
    if n_unknown < total and share <= max_share:
        log.warning("%s: %.1f%% of the interactions (%d of %d) name items absent from %s (e.g. %r); they are "
                    "dropped", inter_uri, 100 * share, n_unknown, total, items_uri, example)
        return {"interactions_unknown_item": n_unknown}
    if n_unknown == total:
        what = f"none of the {total:,} interactions names an item of {items_uri}"
        advice = "Check that both files come from the same catalog"
    else:
        what = (f"{share:.0%} of the interactions ({n_unknown:,} of {total:,}) name items absent from {items_uri}, "
                f"more than ingest.preprocess.max_unknown_item_share ({max_share:.0%})")
        advice = "Check that both files come from the same catalog, or raise max_unknown_item_share"
    reason = _id_mismatch(item_ids, inter_ids[unknown], items_uri, inter_uri, id_types)
    raise InputError(f"{inter_uri}: {what} (e.g. {example!r}; the catalog has e.g. {item_ids.iloc[0]!r}): "
                     f"{reason or advice}")


# ----------------------------------------------------------------------------------------------
# Amazon Reviews 2018 / 2023 raw
# ----------------------------------------------------------------------------------------------


def _read_amazon(cfg: IngestConfig, files: dict[str, str], *, id_keys: tuple[str, ...],
                 user_key: str, time_key: str) -> RawCatalog:
    max_chars = cfg.preprocess.description_max_chars
    meta_uri = files["meta"]
    rows, lines = [], []
    for line_no, obj in iter_json_lines(meta_uri):
        key = next((k for k in id_keys if obj.get(k)), None)
        if key is None:
            raise InputError(f"{meta_uri} line {line_no}: missing field '{id_keys[0]}'")
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise InputError(f"{meta_uri} line {line_no}: field 'title' is {_json_type(title)}, expected a string")
        details = obj.get("details")
        brand = obj.get("brand") or obj.get("store") or (details.get("Brand", "") if isinstance(details, dict) else "")
        rows.append({
            "item_id": _scalar_id(obj[key], key, meta_uri, line_no),
            "title": clean_title(title),
            "description": clean_text(obj.get("description"), max_chars),
            "brand": clean_text(brand),
            "categories": to_categories(obj.get("category", obj.get("categories"))),
        })
        lines.append(line_no)
    if not rows:
        raise InputError(f"{meta_uri}: no items (the file holds no JSON lines)")
    _check_unique([r["item_id"] for r in rows], lines, meta_uri)
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)

    reviews_uri = files["reviews"]
    users, item_ids, times, lines = [], [], [], []
    for line_no, obj in iter_json_lines(reviews_uri):
        key = next((k for k in id_keys if obj.get(k)), None)
        if key is None:
            raise InputError(f"{reviews_uri} line {line_no}: missing field '{id_keys[0]}'")
        users.append(_scalar_id(_require(obj, user_key, reviews_uri, line_no), user_key, reviews_uri, line_no))
        item_ids.append(_scalar_id(obj[key], key, reviews_uri, line_no))
        times.append(_timestamp(_require(obj, time_key, reviews_uri, line_no), reviews_uri, line_no, time_key))
        lines.append(line_no)
    if not users:
        raise InputError(f"{reviews_uri}: no reviews (the file holds no JSON lines)")
    timestamps = unix_seconds(np.asarray(times, dtype=np.int64), cfg.time_unit(), reviews_uri, time_key,
                              lambda i: f"line {lines[i]}")
    interactions = pd.DataFrame({"user_id": users, "item_id": item_ids, "timestamp": timestamps})
    notes = check_id_overlap(items["item_id"], interactions["item_id"], meta_uri, reviews_uri,
                             cfg.preprocess.max_unknown_item_share)
    return RawCatalog(items=items, interactions=interactions, sources=files, notes=notes)


def read_amazon18(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Amazon 2018: meta {asin, title, description[], brand, category[]}, reviews {reviewerID,
    asin, unixReviewTime (s)}."""
    return _read_amazon(cfg, files, id_keys=("asin",), user_key="reviewerID", time_key="unixReviewTime")


def read_amazon23(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Amazon 2023: items keyed by parent_asin, brand from store; reviews {user_id, parent_asin,
    timestamp (ms)}."""
    return _read_amazon(cfg, files, id_keys=("parent_asin", "asin"), user_key="user_id", time_key="timestamp")


# ----------------------------------------------------------------------------------------------
# Generic Parquet
# ----------------------------------------------------------------------------------------------

#: Arrow type kinds each canonical Parquet column accepts ("list": a list of strings; "null": a
#: column with no value at all, read as empty text).
PARQUET_KINDS: dict[str, tuple[str, ...]] = {
    "user_id": ("string", "integer", "floating"),
    "item_id": ("string", "integer", "floating"),
    "timestamp": ("integer", "floating", "timestamp", "date", "string"),
    "title": ("string", "null"),
    "description": ("string", "list", "null"),
    "brand": ("string", "null"),
    "categories": ("list", "string", "null"),
}
_KIND_NAMES = {"string": "string", "integer": "integer", "floating": "floating-point", "timestamp": "timestamp",
               "date": "date", "list": "list<string>"}


def _type_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        return _type_kind(arrow_type.value_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return "list" if _type_kind(arrow_type.value_type) in ("string", "null") else str(arrow_type)
    checks = (("string", (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)),
              ("integer", (pa.types.is_integer,)), ("floating", (pa.types.is_floating,)),
              ("timestamp", (pa.types.is_timestamp,)), ("date", (pa.types.is_date,)), ("null", (pa.types.is_null,)))
    return next((kind for kind, tests in checks if any(test(arrow_type) for test in tests)), str(arrow_type))


def _read_table(uri: str, role: str, required: list[str], optional: list[str],
                columns: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The canonical columns of one Parquet file, each of an accepted type, and their Arrow types."""
    table = storage.read_parquet(uri)
    present = set(table.column_names)
    rename: dict[str, str] = {}
    types: dict[str, str] = {}
    for canonical in required + optional:
        source = columns.get(canonical, canonical)
        if source in present:
            arrow_type = table.schema.field(source).type
            if _type_kind(arrow_type) not in PARQUET_KINDS[canonical]:
                expected = " or ".join(_KIND_NAMES[k] for k in PARQUET_KINDS[canonical] if k != "null")
                raise InputError(f"{uri}: column '{source}' ({role}.{canonical}) has type {arrow_type}; "
                                 f"expected {expected}")
            rename[source], types[canonical] = canonical, str(arrow_type)
        elif canonical in required:
            raise InputError(
                f"{uri}: missing column '{source}' ({role}.{canonical}); found {sorted(present)}. "
                f"Map it with --set ingest.columns.{canonical}=<column>"
            )
    if table.num_rows == 0:
        raise InputError(f"{uri}: no rows (the {role} table is empty)")
    table = table.select(list(rename))
    for i, column in enumerate(table.schema):  # dictionary-encoded strings: plain values, not pandas categories
        if pa.types.is_dictionary(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(column.type.value_type))
    return table.to_pandas().rename(columns=rename), types


def _require_values(frame: pd.DataFrame, column: str, uri: str) -> None:
    missing = frame[column].isna().to_numpy()
    if missing.any():
        raise InputError(f"{uri}: column {column} is null at row {int(np.flatnonzero(missing)[0])} "
                         f"({int(missing.sum()):,} null value(s))")


def _parquet_timestamps(values: pd.Series, uri: str, unit: str) -> np.ndarray:
    """Timestamps as int64 unix seconds from numbers (in ``unit``), datetimes or date strings."""
    where = "row {}".format
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=float)
        bad = ~np.isfinite(numbers)
        if bad.any():
            raise InputError(f"{uri}: column timestamp has {int(bad.sum())} NaN/null value(s) "
                             f"(first at row {int(np.flatnonzero(bad)[0])})")
        raw = values.to_numpy(dtype=np.int64) if pd.api.types.is_integer_dtype(values) else numbers
        return unix_seconds(raw, unit, uri, "timestamp", where)
    stamps = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        numbers = pd.to_numeric(values, errors="coerce")
        hint = ("; the column holds numbers as text: write it as a number column (its unit: "
                "ingest.timestamp_unit)" if numbers.notna().all() else "")
        raise InputError(f"{uri}: column timestamp row {row}: {values.iloc[row]!r} is not a "
                         f"timestamp ({int(bad.sum())} bad value(s)){hint}")
    seconds = ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    require_plausible(seconds, uri, "timestamp", where)
    return seconds


def read_parquet_source(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Platform export: interactions(user_id, item_id, timestamp) + items(item_id, text fields)."""
    max_chars = cfg.preprocess.description_max_chars
    items_uri, inter_uri = files["items"], files["interactions"]
    items, item_types = _read_table(items_uri, "items", ["item_id", "title"],
                                    ["description", "brand", "categories"], cfg.columns)
    _require_values(items, "item_id", items_uri)
    items["item_id"] = items["item_id"].astype(str)
    dup = items["item_id"].duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:2].tolist()
        raise InputError(f"{items_uri}: duplicate item id {items['item_id'].iloc[rows[0]]!r} "
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
    inter, inter_types = _read_table(inter_uri, "interactions", ["user_id", "item_id", "timestamp"], [], cfg.columns)
    for column in ("user_id", "item_id"):
        _require_values(inter, column, inter_uri)
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].astype(str),
        "item_id": inter["item_id"].astype(str),
        "timestamp": _parquet_timestamps(inter["timestamp"], inter_uri, cfg.time_unit()),
    })
    notes = check_id_overlap(out["item_id"], interactions["item_id"], items_uri, inter_uri,
                             cfg.preprocess.max_unknown_item_share,
                             id_types=(item_types["item_id"], inter_types["item_id"]))
    return RawCatalog(items=out, interactions=interactions, sources=files, notes=notes)


def _require_titles(items: pd.DataFrame, uri: str) -> None:
    empty = items["title"].str.len() == 0
    if empty.any():
        ids = items.loc[empty, "item_id"].head(3).tolist()
        raise InputError(f"{uri}: {int(empty.sum())} item(s) with an empty title, e.g. {ids}")


# ----------------------------------------------------------------------------------------------
# MiniOneRec / SIDReasoner processed release
# ----------------------------------------------------------------------------------------------


class _JsonObject(dict):
    """A JSON object that remembers the keys it held more than once (``json`` keeps the last)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) < len(pairs):
            counts = Counter(key for key, _ in pairs)
            obj.duplicates = tuple(key for key, n in counts.items() if n > 1)
        return obj


def _load_json(uri: str) -> tuple[Any, str]:
    """A JSON file's value (objects as :class:`_JsonObject`) and its text."""
    text = _decode(_read_bytes(uri), uri)
    if not text.strip():
        raise InputError(f"{uri}: empty file")
    try:
        return json.loads(text, object_pairs_hook=_JsonObject.from_pairs), text
    except json.JSONDecodeError as exc:
        raise InputError(f"{uri} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def _key_lines(text: str, key: str) -> list[int]:
    """Lines where ``key`` opens an entry of the top-level object (an object or array value)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:\s*[\[{]")
    return [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]


def _entry(uri: str, text: str, key: str) -> str:
    """``uri line N: item 'key'`` (the line when it can be found)."""
    lines = _key_lines(text, key)
    return f"{uri}{f' line {lines[0]}' if lines else ''}: item {key!r}"


def _top_object(uri: str, data: Any, text: str, shape: str) -> _JsonObject:
    """The file's top-level object {item_id: ...}, with unique ids."""
    if not isinstance(data, dict):
        raise InputError(f"{uri}: expected an object {shape}, got {_json_type(data)}")
    if data.duplicates:
        key = data.duplicates[0]
        lines = _key_lines(text, key)
        at = f" at lines {lines[0]} and {lines[1]}" if len(lines) >= 2 else ""
        raise InputError(f"{uri}: duplicate item id {key!r}{at}")
    if not data:
        raise InputError(f"{uri}: no items (an empty object)")
    return data


def _read_release_items(uri: str, max_chars: int) -> pd.DataFrame:
    data, text = _load_json(uri)
    rows = []
    for item_id, meta in _top_object(uri, data, text, "{item_id: {title, ...}}").items():
        if not isinstance(meta, dict):
            raise InputError(f"{_entry(uri, text, item_id)} is {_json_type(meta)}, expected an object")
        if meta.duplicates:
            raise InputError(f"{_entry(uri, text, item_id)} has the field {meta.duplicates[0]!r} twice")
        title = meta.get("title")
        if title is not None and not isinstance(title, str):
            raise InputError(f"{_entry(uri, text, item_id)}: field 'title' is {_json_type(title)}, expected a string")
        rows.append({
            "item_id": str(item_id),
            "title": clean_title(title),
            "description": clean_text(meta.get("description"), max_chars),
            "brand": clean_text(meta.get("brand")),
            "categories": to_categories(meta.get("categories")),
        })
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    _require_titles(items, uri)
    return items


def _read_release_index(uri: str) -> dict[str, str]:
    """``index.json``: item id -> the upstream SID, its tokens joined."""
    data, text = _load_json(uri)
    sids = {}
    for item_id, tokens in _top_object(uri, data, text, "{item_id: [token, ...]}").items():
        if isinstance(tokens, str):
            tokens = [tokens]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise InputError(f"{_entry(uri, text, item_id)} is {_json_type(tokens)}, expected a list of SID tokens")
        sids[item_id] = "".join(tokens)
    return sids


def _read_split_csv(uri: str) -> pd.DataFrame:
    text = _decode(_read_bytes(uri), uri)
    if not text.strip():
        raise InputError(f"{uri}: empty file (expected a header line naming user_id, history_item_id, item_id)")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise InputError(f"{uri}: malformed CSV: {exc}") from None


def _parse_id_list(text: Any, uri: str, line_no: int, column: str) -> list[str]:
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise InputError(f"{uri} line {line_no}: column {column} is not a list literal: {str(text)[:80]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{uri} line {line_no}: column {column} is not a list: {str(text)[:80]!r}")
    return [str(v) for v in value]


def read_release(cfg: IngestConfig, files: dict[str, str]) -> RawCatalog:
    """Processed release: ``item.json`` + CSV splits (+ optional ``index.json`` of upstream SIDs).

    The CSVs carry no timestamps; rows are in time order within and across splits
    (train < valid < test), so ``timestamp`` is that global row ordinal (``timestamp_kind:
    ordinal`` in the stats).
    """
    items = _read_release_items(files["items"], cfg.preprocess.description_max_chars)
    if "index" in files:
        index = _read_release_index(files["index"])
        items["upstream_sid"] = items["item_id"].map(lambda i: index.get(i, ""))
    known = set(items["item_id"])
    present = [s for s in SPLITS if s in files]
    if not present:
        raise InputError(f"{cfg.source}: no split file found (looked for "
                         f"{[cfg.file_roles()[s] for s in SPLITS]})")
    missing = [s for s in SPLITS if s not in files]
    if missing:
        log.warning("release pack %s has no %s split(s)%s", cfg.source, missing,
                    "; re-splitting chronologically (ingest.resplit)" if cfg.resplit else "")
    frames = []
    for split in present:
        uri = files[split]
        df = _read_split_csv(uri)
        for column in ("user_id", "history_item_id", "item_id"):
            if column not in df.columns:
                raise InputError(f"{uri}: missing column '{column}'; found {list(df.columns)}")
        if df.empty:
            log.warning("%s has a header but no rows", uri)
        histories = []
        for offset, (text, target, user) in enumerate(zip(df["history_item_id"], df["item_id"], df["user_id"])):
            line_no = offset + 2  # header is line 1
            history = _parse_id_list(text, uri, line_no, "history_item_id")
            for item_id in [*history, target]:
                if item_id not in known:
                    raise InputError(f"{uri} line {line_no}: item {item_id!r} is not in {files['items']}")
            if not user:
                raise InputError(f"{uri} line {line_no}: empty user_id")
            histories.append(history[-cfg.preprocess.max_history:])
        frames.append(pd.DataFrame({"user_id": df["user_id"], "history": histories,
                                    "target": df["item_id"].astype(str), "split": split}))
    samples = pd.concat(frames, ignore_index=True)
    if samples.empty:
        raise InputError(f"{cfg.source}: no samples: the split files {[files[s] for s in present]} have no rows")
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
