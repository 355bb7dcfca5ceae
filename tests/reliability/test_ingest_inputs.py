"""Bad input to ``python -m components.ingest``: one row per defect, for all four formats.

Every row starts from a valid catalog of its format (``tests/ingest/helpers.py``; the baselines
are checked to succeed below), changes one thing, runs the stage as a user does and expects one
clear message naming the file, line or field, advice only where it applies, and no output.
Case classes (``Case.kind``):

* ``unreadable file``: missing, a folder, truncated or corrupt gzip, not UTF-8, 0 bytes, not Parquet;
* ``malformed record``: a line, row, field or column that does not parse or is missing;
* ``duplicate id or field``: an item id twice, a field twice in one object, a column twice;
* ``wrong type``: a contract field or column of the wrong type;
* ``empty input``: a file with no records or rows;
* ``implausible dates``: a timestamp unit that does not match the data, dates before 1990 or in
  the future;
* ``catalog mismatch``: interactions naming items the catalog lacks (ids written differently,
  another catalog);
* ``nothing survives preprocessing``: the review window, its bounded extension, the k-core or the
  title filter leave nothing;
* ``config``: a setting that cannot apply to the source.
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.config import ConfigError
from components.common.storage import StorageError
from tests.ingest.helpers import (
    RELEASE_HEADER,
    amazon18_files,
    amazon23_files,
    grid_interactions,
    parquet_files,
    release_pack,
)
from tests.reliability.harness import Case, StageCall, check, check_cli, run_in_process, write_profile

UNREADABLE = "unreadable file"
MALFORMED = "malformed record"
DUPLICATE = "duplicate id or field"
WRONG_TYPE = "wrong type"
EMPTY = "empty input"
DATES = "implausible dates"
MISMATCH = "catalog mismatch"
NOTHING_LEFT = "nothing survives preprocessing"
CONFIG = "config"

# ----------------------------------------------------------------------------------------------
# Builders: a valid catalog of each format under ROOT/in, then one change
# ----------------------------------------------------------------------------------------------

Edit = Callable[[Path], None]


def ingest_call(root: Path, fmt: str, sets: tuple[str, ...]) -> StageCall:
    """The profile a user would write for this source (recipe defaults) and the stage command."""
    config = write_profile(root / "profile.yaml", {"ingest": {"format": fmt, "source": str(root / "in")}})
    return StageCall(stage="ingest", config=config, out=root / "out", sets=sets)


def builder(fmt: str, write: Callable[[Path], object], sets: tuple[str, ...],
            edit: Edit | None) -> Callable[[Path], StageCall]:
    """A row's builder: ``write`` the valid files under ROOT/in, ``edit`` them, then the command."""
    def build(root: Path) -> StageCall:
        write(root / "in")
        if edit:
            edit(root / "in")
        return ingest_call(root, fmt, sets)
    return build


def amazon18(meta: list | None = None, reviews: list | None = None, sets: tuple[str, ...] = (),
             edit: Edit | None = None) -> Callable[[Path], StageCall]:
    return builder("amazon18", lambda folder: amazon18_files(folder, meta, reviews), sets, edit)


def amazon23(meta: list | None = None, reviews: list | None = None, sets: tuple[str, ...] = (),
             edit: Edit | None = None) -> Callable[[Path], StageCall]:
    return builder("amazon23", lambda folder: amazon23_files(folder, meta, reviews), sets, edit)


def parquet(items: dict | None = None, interactions: dict | None = None, sets: tuple[str, ...] = (),
            edit: Edit | None = None) -> Callable[[Path], StageCall]:
    """Columns given as dicts (pa.table inputs) replace the valid table of that file."""
    return builder("parquet", lambda folder: parquet_files(
        folder, items=pa.table(items) if items is not None else None,
        interactions=pa.table(interactions) if interactions is not None else None), sets, edit)


def release(edit: Edit | None = None, sets: tuple[str, ...] = ()) -> Callable[[Path], StageCall]:
    return builder("release", release_pack, sets, edit)


def rewrite(name: str, change: Callable[[bytes], bytes]) -> Edit:
    """Apply ``change`` to a file's bytes (decompressed and gzipped again when it is gzipped)."""
    def edit(folder: Path) -> None:
        path = folder / name
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            path.write_bytes(gzip.compress(change(gzip.decompress(data)), mtime=0))
        else:
            path.write_bytes(change(data))
    return edit


def raw_bytes(name: str, change: Callable[[bytes], bytes]) -> Edit:
    """Apply ``change`` to a file's bytes as stored (to damage the gzip container itself)."""
    def edit(folder: Path) -> None:
        (folder / name).write_bytes(change((folder / name).read_bytes()))
    return edit


def replace_file(name: str, text: str) -> Edit:
    def edit(folder: Path) -> None:
        (folder / name).write_text(text)
    return edit


def make_folder(name: str) -> Edit:
    def edit(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
    return edit


def remove(name: str) -> Edit:
    return lambda folder: (folder / name).unlink()


def unix(year: int, month: int = 1, day: int = 1) -> int:
    return int(dt.datetime(year, month, day, tzinfo=dt.timezone.utc).timestamp())


GRID = grid_interactions()  # 12 users x 6 reviews of items i0..i7, a day apart from 2017-07-14


def reviews18(item_id=lambda r: r.item_id, time=lambda r: int(r.timestamp), rows=GRID) -> list[dict]:
    """The grid as amazon18 reviews, with item ids and times mapped."""
    return [{"reviewerID": r.user_id, "asin": item_id(r), "unixReviewTime": time(r)} for r in rows.itertuples()]


META18 = [{"asin": f"i{k}", "title": f"Item number {k}"} for k in range(8)]
ITEMS_PQ = {"item_id": [f"i{k}" for k in range(8)], "title": [f"Thing number {k}" for k in range(8)]}
INTER_PQ = {"user_id": GRID.user_id.tolist(), "item_id": GRID.item_id.tolist(), "timestamp": GRID.timestamp.tolist()}


def with_review(reviews: list[dict], index: int, **fields) -> list[dict]:
    return [({**r, **fields} if i == index else r) for i, r in enumerate(reviews)]


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

TABLE: list[Case] = [
    # -- unreadable file ---------------------------------------------------------------------
    Case("amazon18-missing-reviews-file", UNREADABLE, amazon18(edit=remove("reviews.json.gz")),
         names="ingest.files.reviews", says=("reviews.json.gz",)),
    Case("amazon18-meta-is-a-folder", UNREADABLE, amazon18(edit=make_folder("meta.json.gz")),
         names="meta.json.gz: cannot read"),
    Case("amazon18-truncated-gzip", UNREADABLE,
         amazon18(edit=raw_bytes("reviews.json.gz", lambda b: b[: len(b) // 2])),
         names="reviews.json.gz: truncated or corrupt gzip data after line",
         says=("copy or download the file again",)),
    Case("amazon23-gzip-crc-mismatch", UNREADABLE,
         amazon23(edit=raw_bytes("meta.jsonl.gz", lambda b: b[:-8] + bytes(8))),
         names="meta.jsonl.gz: truncated or corrupt gzip data after line 8"),
    Case("amazon23-meta-not-utf8", UNREADABLE,
         amazon23(edit=rewrite("meta.jsonl.gz", lambda b: b.replace(b"Gadget 1", b"Gadg\xe9t 1"))),
         names="meta.jsonl.gz line 2: byte 0xe9 at offset", says=("of the decompressed data", "is not UTF-8")),
    Case("amazon18-reviews-not-utf8-uncompressed", UNREADABLE,
         amazon18(sets=("ingest.files.reviews=reviews.json",),
                  edit=lambda folder: (folder / "reviews.json").write_bytes(
                      gzip.decompress((folder / "reviews.json.gz").read_bytes()).replace(b'"u3"', b'"u\xff"', 1))),
         names="reviews.json line 19: byte 0xff", says=("is not UTF-8",), never_says=("decompressed",)),
    Case("release-csv-not-utf8", UNREADABLE, release(rewrite("test.csv", lambda b: b.replace(b"u2,", b"u\xff2,"))),
         names="test.csv line 2: byte 0xff at offset", says=("is not UTF-8",)),
    Case("release-item-json-not-utf8", UNREADABLE,
         release(rewrite("item.json", lambda b: b.replace(b"Item 1", b"It\xe9m 1"))),
         names="item.json line 9: byte 0xe9"),
    Case("release-empty-csv", UNREADABLE, release(replace_file("valid.csv", "")),
         names="valid.csv: empty file", says=("header line",)),
    Case("parquet-items-not-parquet", UNREADABLE, parquet(edit=replace_file("items.parquet", "not parquet")),
         names="items.parquet: not a readable Parquet file", error=StorageError),

    # -- malformed record --------------------------------------------------------------------
    Case("amazon18-malformed-json-line", MALFORMED,
         amazon18(reviews=[*reviews18()[:3], '{"reviewerID": "u", "asin": ']),
         names="reviews.json.gz line 4: malformed JSON"),
    Case("amazon18-missing-timestamp", MALFORMED,
         amazon18(reviews=[{k: v for k, v in r.items() if k != "unixReviewTime" or i != 1}
                           for i, r in enumerate(reviews18())]),
         names="reviews.json.gz line 2: missing field 'unixReviewTime'"),
    *[Case(f"amazon18-timestamp-{label}", MALFORMED, amazon18(reviews=with_review(reviews18(), 1, unixReviewTime=bad)),
           names=f"reviews.json.gz line 2: unixReviewTime {bad!r} is not a unix timestamp")
      for label, bad in [("text", "abc"), ("nan", float("nan")), ("negative", -5)]],
    Case("amazon18-item-id-object", MALFORMED,
         amazon18(meta=[*META18[:2], {"asin": {"id": 2}, "title": "x y"}, *META18[3:]]),
         names="meta.json.gz line 3: field 'asin' is an object, expected a string id"),
    Case("release-history-not-a-list", MALFORMED,
         release(replace_file("valid.csv", RELEASE_HEADER + "u1,[],x,[1,1\n")),
         names="valid.csv line 2: column history_item_id is not a list"),
    Case("release-unknown-history-item", MALFORMED,
         release(replace_file("test.csv", RELEASE_HEADER + "u,[],x,[1],2,[],s\nu,[],x,\"[1, 9]\",2,[],s\n")),
         names="test.csv line 3: item '9' is not in", says=("item.json",)),
    Case("release-csv-missing-column", MALFORMED,
         release(replace_file("train.csv", "user_id,history_item_id\nu1,[1]\n")),
         names="train.csv: missing column 'item_id'"),
    Case("release-index-malformed-json", MALFORMED,
         release(replace_file("index.json", '{\n "0": ["<a_0>"],\n "1": ["<a_1>"\n}\n')),
         names="index.json line 4: malformed JSON"),
    Case("release-index-not-tokens", MALFORMED, release(replace_file("index.json", '{\n "0": 5\n}\n')),
         names="index.json: item '0' is a number, expected a list of SID tokens"),
    Case("parquet-null-user-id", MALFORMED, parquet(interactions={**INTER_PQ, "user_id": [None, *INTER_PQ["user_id"][1:]]}),
         names="interactions.parquet: column user_id is null at row 0"),
    Case("parquet-nan-timestamp", MALFORMED,
         parquet(interactions={**INTER_PQ, "timestamp": [float(t) for t in INTER_PQ["timestamp"][:-1]] + [float("nan")]}),
         names="interactions.parquet: column timestamp has 1 NaN/null value(s) (first at row 71)"),
    Case("parquet-timestamps-as-text-numbers", MALFORMED,
         parquet(interactions={**INTER_PQ, "timestamp": [str(t) for t in INTER_PQ["timestamp"]]}),
         names="interactions.parquet: column timestamp row 0: '1500000000' is not a timestamp",
         says=("the column holds numbers as text",)),
    Case("amazon23-missing-parent-asin", MALFORMED,
         amazon23(meta=[{"title": f"Widget {k}"} if k == 6 else {"parent_asin": f"i{k}", "title": f"Widget {k}"}
                        for k in range(8)]),
         names="meta.jsonl.gz line 7: missing field 'parent_asin'"),
    Case("amazon23-user-id-list", MALFORMED,
         amazon23(reviews=[{"user_id": ["u", 1] if r.Index == 9 else r.user_id, "parent_asin": r.item_id,
                            "timestamp": int(r.timestamp) * 1000} for r in GRID.itertuples()]),
         names="reviews.jsonl.gz line 10: field 'user_id' is an array, expected a string id"),
    Case("parquet-unparseable-timestamp", MALFORMED,
         parquet(interactions={**INTER_PQ, "timestamp": ["2018-01-01"] * 3 + ["yesterday"] * 69}),
         names="interactions.parquet: column timestamp row 3: 'yesterday' is not a timestamp"),

    # -- duplicate id ------------------------------------------------------------------------
    Case("amazon18-duplicate-item-id", DUPLICATE, amazon18(meta=[*META18, {"asin": "i0", "title": "Again"}]),
         names="meta.json.gz: duplicate item id 'i0' at lines 1 and 9"),
    Case("amazon23-duplicate-parent-asin", DUPLICATE,
         amazon23(meta=[{"parent_asin": f"i{k % 7}", "title": f"Widget {k}"} for k in range(8)]),
         names="meta.jsonl.gz: duplicate item id 'i0' at lines 1 and 8"),
    Case("parquet-duplicate-column", DUPLICATE,
         parquet(edit=lambda folder: pq.write_table(
             pa.Table.from_arrays([pa.array(ITEMS_PQ["item_id"]), pa.array(ITEMS_PQ["title"]), pa.array(ITEMS_PQ["title"])],
                                  names=["item_id", "title", "title"]), folder / "items.parquet")),
         names="items.parquet: not a readable Parquet file: Multiple matches for FieldRef.Name(title)",
         error=StorageError),
    Case("parquet-duplicate-item-id", DUPLICATE,
         parquet(items={"item_id": ["i0", "i1", "i0"], "title": ["a b", "c d", "e f"]}),
         names="items.parquet: duplicate item id 'i0' at rows 0 and 2"),
    Case("release-duplicate-item-id", DUPLICATE,
         release(rewrite("item.json", lambda b: b.replace(b"{\n", b'{\n "3": {"title": "Item three again"},\n', 1))),
         names="item.json: duplicate item id '3' at lines 2 and"),
    Case("release-duplicate-field", DUPLICATE,
         release(rewrite("item.json", lambda b: b.replace(b'"title": "Item 4"', b'"title": "Item 4", "title": "X"'))),
         names="item.json line 26: item '4' has the field 'title' twice"),

    # -- wrong type --------------------------------------------------------------------------
    Case("parquet-title-integers", WRONG_TYPE, parquet(items={**ITEMS_PQ, "title": list(range(8))}),
         names="items.parquet: column 'title' (items.title) has type int64", says=("expected string",)),
    Case("parquet-categories-integers", WRONG_TYPE, parquet(items={**ITEMS_PQ, "categories": list(range(8))}),
         names="items.parquet: column 'categories' (items.categories) has type int64",
         says=("expected list<string> or string",)),
    Case("parquet-timestamp-booleans", WRONG_TYPE, parquet(interactions={**INTER_PQ, "timestamp": [True] * 72}),
         names="interactions.parquet: column 'timestamp' (interactions.timestamp) has type bool"),
    Case("parquet-renamed-column-missing", MALFORMED,
         parquet(items={"item_id": ITEMS_PQ["item_id"], "tittle": ITEMS_PQ["title"]}),
         names="items.parquet: missing column 'title'", says=("--set ingest.columns.title=<column>",)),
    Case("amazon23-title-number", WRONG_TYPE,
         amazon23(meta=[{"parent_asin": f"i{k}", "title": k if k == 1 else f"Widget {k}"} for k in range(8)]),
         names="meta.jsonl.gz line 2: field 'title' is a number, expected a string"),
    Case("release-title-number", WRONG_TYPE,
         release(rewrite("item.json", lambda b: b.replace(b'"title": "Item 2"', b'"title": 2'))),
         names="item.json line 14: item '2': field 'title' is a number, expected a string"),

    # -- empty input -------------------------------------------------------------------------
    Case("amazon18-empty-meta", EMPTY, amazon18(meta=[]), names="meta.json.gz: no items",
         never_says=("k_core", "window")),
    Case("amazon18-empty-reviews", EMPTY, amazon18(reviews=[]), names="reviews.json.gz: no reviews",
         never_says=("k_core", "window")),
    Case("amazon23-zero-byte-reviews", EMPTY, amazon23(edit=replace_file("reviews.jsonl.gz", "")),
         names="reviews.jsonl.gz: no reviews"),
    Case("parquet-zero-row-items", EMPTY, parquet(items={"item_id": pa.array([], pa.string()),
                                                         "title": pa.array([], pa.string())}),
         names="items.parquet: no rows", never_says=("k_core", "window")),
    Case("parquet-zero-row-interactions", EMPTY,
         parquet(interactions={k: pa.array([], t) for k, t in [("user_id", pa.string()), ("item_id", pa.string()),
                                                                 ("timestamp", pa.int64())]}),
         names="interactions.parquet: no rows"),
    Case("release-without-any-split", EMPTY,
         release(lambda folder: [(folder / f"{s}.csv").unlink() for s in ("train", "valid", "test")]),
         names="no split file found", says=("'train.csv', 'valid.csv', 'test.csv'",)),
    Case("release-empty-item-json", EMPTY, release(replace_file("item.json", "{}")), names="item.json: no items"),
    Case("release-splits-without-rows", EMPTY,
         release(lambda folder: [(folder / f"{s}.csv").write_text(RELEASE_HEADER) for s in ("train", "valid", "test")]),
         names="no samples: the split files", says=("test.csv", "have no rows")),

    # -- implausible dates -------------------------------------------------------------------
    Case("amazon23-seconds-read-as-milliseconds", DATES,
         amazon23(reviews=[{"user_id": r.user_id, "parent_asin": r.item_id, "timestamp": int(r.timestamp)}
                           for r in GRID.itertuples()]),
         names="reviews.jsonl.gz line 1: timestamp 1500000000 read as milliseconds is 1970-01-18",
         says=("72 of 72 values", "as seconds they span 2017-07-14..2017-09-23", "set ingest.timestamp_unit=s"),
         never_says=("k_core", "window")),
    Case("parquet-unit-ms-on-seconds", DATES, parquet(sets=("ingest.timestamp_unit=ms",)),
         names="interactions.parquet row 0: timestamp 1500000000 read as milliseconds is 1970-01-18",
         says=("set ingest.timestamp_unit=s",)),
    Case("parquet-milliseconds-read-as-seconds", DATES,
         parquet(interactions={**INTER_PQ, "timestamp": [t * 1000 for t in INTER_PQ["timestamp"]]}),
         names="interactions.parquet row 0: timestamp 1500000000000 read as seconds is year ~",
         says=("set ingest.timestamp_unit=ms",)),
    Case("amazon18-zero-timestamp", DATES, amazon18(reviews=with_review(reviews18(), 4, unixReviewTime=0)),
         names="reviews.json.gz line 5: unixReviewTime 0 read as seconds is 1970-01-01",
         says=("1 of 72 values",), never_says=("timestamp_unit",)),
    Case("amazon18-future-timestamps", DATES,
         amazon18(reviews=reviews18(time=lambda r: int(r.timestamp) + unix(2100) - unix(2017))),
         names="reviews.json.gz line 1: unixReviewTime", says=("is 2100-", "not a plausible date")),
    Case("parquet-datetimes-in-1970", DATES,
         parquet(interactions={**INTER_PQ, "timestamp": pa.array([t // 1000 for t in INTER_PQ["timestamp"]],
                                                                 pa.timestamp("s"))}),
         names="interactions.parquet row 0: timestamp is 1970-01-18, not a plausible date"),

    # -- catalog mismatch --------------------------------------------------------------------
    Case("amazon18-ids-with-trailing-spaces", MISMATCH, amazon18(meta=[{**m, "asin": m["asin"] + " "} for m in META18]),
         names="reviews.json.gz: none of the 72 interactions names an item of",
         says=("meta.json.gz", "the ids differ in surrounding whitespace: 'i0' in", "is 'i0 ' in"),
         never_says=("k_core", "window")),
    Case("amazon23-ids-differ-in-case", MISMATCH,
         amazon23(meta=[{"parent_asin": f"I{k}", "title": f"Widget {k}"} for k in range(8)]),
         names="reviews.jsonl.gz: none of the 72 interactions names an item of",
         says=("the ids differ in letter case",)),
    Case("parquet-ids-typed-differently", MISMATCH,
         parquet(items={"item_id": list(range(8)), "title": ITEMS_PQ["title"]},
                 interactions={**INTER_PQ, "item_id": [float(i[1:]) for i in INTER_PQ["item_id"]]}),
         names="interactions.parquet: none of the 72 interactions names an item of",
         says=("item_id is double in", "but int64 in", "the ids differ in number formatting", "same type in both files"),
         never_says=("k_core", "window")),
    Case("amazon18-another-catalog", MISMATCH, amazon18(meta=[{"asin": f"x{k}", "title": f"Other {k}"} for k in range(8)]),
         names="reviews.json.gz: none of the 72 interactions names an item of",
         says=("Check that both files come from the same catalog",)),
    Case("amazon18-unknown-items-past-threshold", MISMATCH,
         amazon18(reviews=reviews18(item_id=lambda r: r.item_id if r.Index % 5 < 2 else f"gone{r.Index}")),
         names="reviews.json.gz: 58% of the interactions (42 of 72) name items absent from",
         says=("more than ingest.preprocess.max_unknown_item_share (50%)",)),

    # -- nothing survives preprocessing ------------------------------------------------------
    Case("amazon18-out-of-window", NOTHING_LEFT,
         amazon18(reviews=reviews18(time=lambda r: int(r.timestamp) + unix(2020) - unix(2017))),
         names="reviews.json.gz: no interaction falls in the review window [2016-10-01, 2018-12-01)",
         says=("the interactions span 2020-07-13..2020-09-22", "ingest.preprocess.window_start / window_end"),
         never_says=("k_core",)),
    Case("amazon18-window-extension-exhausted", NOTHING_LEFT,
         amazon18(reviews=with_review(reviews18(), 0, unixReviewTime=unix(2001, 3, 4)),
                  sets=("ingest.preprocess.min_window_items=100", "ingest.preprocess.max_window_extensions=3")),
         names="reviews.json.gz: the review window from 2013-10-01 keeps 8 items",
         says=("fewer than ingest.preprocess.min_window_items (100)", "back 3 year(s)",
               "the interactions start 2001-03-04", "raise max_window_extensions")),
    Case("amazon18-reviewed-items-fail-title-filter", NOTHING_LEFT,
         amazon18(meta=[*[{**m, "title": ""} for m in META18], {"asin": "i8", "title": "Never reviewed"}]),
         names="reviews.json.gz: no interaction names an item that passes the title filter of",
         says=("meta.json.gz", "{'empty': 8}"), never_says=("k_core", "window")),
    Case("amazon18-kcore-too-high", NOTHING_LEFT, amazon18(sets=("ingest.preprocess.k_core=50",)),
         names="reviews.json.gz: the 50-core leaves no interaction", says=("Lower ingest.preprocess.k_core",),
         never_says=("window_start",)),
    Case("amazon18-single-interaction-users", NOTHING_LEFT,
         amazon18(reviews=[{"reviewerID": f"u{k}", "asin": f"i{k % 8}", "unixReviewTime": unix(2017) + k}
                           for k in range(40)], sets=("ingest.preprocess.k_core=1",)),
         names="reviews.json.gz: no samples: no user has two interactions left"),
    Case("amazon18-every-title-too-long", NOTHING_LEFT,
         amazon18(meta=[{"asin": f"i{k}", "title": "word " * 25} for k in range(8)]),
         names="meta.json.gz: all 8 items fail the title filter", says=("raise ingest.preprocess.title_max_words",),
         never_says=("k_core", "window")),
    Case("amazon18-invalid-title-without-filter", NOTHING_LEFT,
         amazon18(meta=[{**m, "title": ""} if m["asin"] == "i5" else m for m in META18],
                  sets=("ingest.preprocess.title_filter=false",)),
         names="meta.json.gz: 1 item(s) with an invalid title", says=("'i5'", "title_filter")),
    Case("parquet-empty-title", NOTHING_LEFT, parquet(items={**ITEMS_PQ, "title": ["ok title"] * 7 + [""]}),
         names="items.parquet: 1 item(s) with an empty title", says=("'i7'",)),

    # -- config ------------------------------------------------------------------------------
    Case("release-timestamp-unit", CONFIG, release(sets=("ingest.timestamp_unit=ms",)),
         names="timestamp_unit: the release format has no timestamps", error=ConfigError),
    Case("amazon18-unknown-share-above-one", CONFIG, amazon18(sets=("ingest.preprocess.max_unknown_item_share=1.5",)),
         names="ingest.preprocess.max_unknown_item_share", error=ConfigError),
]

#: One row per format through the real command line (a fresh interpreter each).
CLI_ROWS = ["amazon18-truncated-gzip", "amazon23-seconds-read-as-milliseconds", "parquet-title-integers",
            "release-duplicate-item-id"]


def test_the_table_covers_every_format_and_class():
    assert len({case.id for case in TABLE}) == len(TABLE)
    formats = {case.id.split("-")[0] for case in TABLE}
    assert formats == {"amazon18", "amazon23", "parquet", "release"}
    assert {case.kind for case in TABLE} == {UNREADABLE, MALFORMED, DUPLICATE, WRONG_TYPE, EMPTY, DATES, MISMATCH,
                                            NOTHING_LEFT, CONFIG}
    assert set(CLI_ROWS) <= {case.id for case in TABLE}


@pytest.mark.parametrize("build", [amazon18(), amazon23(), parquet(), release()],
                         ids=["amazon18", "amazon23", "parquet", "release"])
def test_baseline_of_each_format_ingests(build, tmp_path, tracking_uri, capsys):
    """Each row's failure is its one change: the unchanged input succeeds the same way."""
    call = build(tmp_path)
    outcome = run_in_process(call, tracking_uri, capsys)
    assert outcome.exit_code == 0, outcome.message
    assert {p.name for p in call.out.iterdir()} == {"items.parquet", "samples.parquet", "stats.json",
                                                    "_PUBLISH.ingest.json"}


@pytest.mark.parametrize("case", [case.param() for case in TABLE])
def test_bad_input_fails_clearly(case, tmp_path, tracking_uri, capsys):
    check(case, tmp_path, tracking_uri, capsys)


@pytest.mark.parametrize("case", [case.param() for case in TABLE if case.id in CLI_ROWS])
def test_bad_input_fails_clearly_on_the_command_line(case, tmp_path, tracking_uri):
    check_cli(case, tmp_path, tracking_uri)
