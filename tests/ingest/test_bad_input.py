"""Imperfect input that ingest accepts (with a warning or a filter), and the settings its error
messages advise actually working. Input it rejects is a row of the reliability table
(``tests/reliability/test_ingest_inputs.py``), run through the stage CLI."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging

import pyarrow as pa
import pytest

from components.common.errors import InputError
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog
from tests.ingest.helpers import (
    amazon18_files,
    amazon23_files,
    config,
    grid_interactions,
    parquet_files,
    release_pack,
)


def ingest(cfg):
    return preprocess(read_catalog(cfg), cfg.preprocess, resplit=cfg.resplit)


def with_settings(cfg, **fields):
    """``cfg`` with ingest fields and (``preprocess__x``) preprocess fields replaced, validated."""
    pre = {k.removeprefix("preprocess__"): v for k, v in fields.items() if k.startswith("preprocess__")}
    top = {k: v for k, v in fields.items() if not k.startswith("preprocess__")}
    data = cfg.model_dump() | top
    data["preprocess"] = data["preprocess"] | pre
    return type(cfg).model_validate(data)


def test_uncompressed_json_lines_work_too(tmp_path):
    amazon18_files(tmp_path)
    raw = gzip.decompress((tmp_path / "reviews.json.gz").read_bytes())
    (tmp_path / "reviews.json").write_bytes(raw)
    cfg = with_settings(config("amazon18", tmp_path, k_core=2), files={"reviews": "reviews.json"})
    assert len(ingest(cfg)[1]) > 0


def test_invalid_titles_are_dropped_by_the_filter(tmp_path):
    meta = [{"asin": f"i{k}", "title": f"Item {k}" if k != 5 else ""} for k in range(8)]
    items, _, stats = ingest(config("amazon18", amazon18_files(tmp_path, meta=meta), k_core=2))
    assert len(items) == 7 and stats["items_dropped_title"] == {"empty": 1}


def test_few_unknown_items_are_dropped_with_a_warning(tmp_path, caplog):
    reviews = [{"reviewerID": r.user_id, "asin": r.item_id if r.Index % 10 else "gone", "unixReviewTime": int(r.timestamp)}
               for r in grid_interactions().itertuples()]  # 8 of 72 name an item meta lacks
    cfg = config("amazon18", amazon18_files(tmp_path, reviews=reviews), k_core=2)
    with caplog.at_level(logging.WARNING, logger="components.ingest.readers"):
        _, samples, stats = ingest(cfg)
    assert "11.1% of the interactions (8 of 72) name items absent from" in caplog.text and "'gone'" in caplog.text
    assert stats["interactions_unknown_item"] == 8 and stats["interactions_known_items"] == 64
    assert "gone" not in set(samples.target)
    # the same share is an error once it exceeds the configured bound
    with pytest.raises(InputError, match=r"11% of the interactions \(8 of 72\).*max_unknown_item_share \(10%\)"):
        ingest(with_settings(cfg, preprocess__max_unknown_item_share=0.1))


def test_the_advised_timestamp_unit_reads_amazon23_seconds(tmp_path):
    reviews = [{"user_id": r.user_id, "parent_asin": r.item_id, "timestamp": int(r.timestamp)}
               for r in grid_interactions().itertuples()]
    cfg = config("amazon23", amazon23_files(tmp_path, reviews=reviews), k_core=2)
    with pytest.raises(InputError, match="set ingest.timestamp_unit=s"):
        ingest(cfg)
    _, samples, _ = ingest(with_settings(cfg, timestamp_unit="s"))
    assert samples.timestamp.min() > 1_500_000_000  # July 2017, as written


def test_the_advised_window_covers_reviews_outside_it(tmp_path):
    """Reviews of 2020 miss the recipe's 2016-10..2018-11 window; the advised setting takes them."""
    reviews = [{"reviewerID": r.user_id, "asin": r.item_id, "unixReviewTime": int(r.timestamp) + 100_000_000}
               for r in grid_interactions().itertuples()]
    cfg = config("amazon18", amazon18_files(tmp_path, reviews=reviews), k_core=2,
                 window_start=dt.date(2016, 10, 1), window_end=dt.date(2018, 12, 1))
    with pytest.raises(InputError, match="window_start / window_end to cover them"):
        ingest(cfg)
    assert len(ingest(with_settings(cfg, preprocess__window_end=None))[1]) > 0


def test_window_extension_stops_where_the_interactions_start(tmp_path):
    """Too few items but no older interaction: the window cannot grow, so ingest keeps what it has."""
    cfg = config("amazon18", amazon18_files(tmp_path), k_core=2, window_start=dt.date(2017, 8, 1),
                 min_window_items=100, max_window_extensions=1)
    _, _, stats = ingest(cfg)
    assert stats["window"]["extended_years"] == 1 and stats["window"]["start"] == "2016-08-01"


def test_release_files_with_a_byte_order_mark(tmp_path):
    release_pack(tmp_path)
    for name in ("item.json", "test.csv"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (tmp_path / name).read_bytes())
    items, samples, _ = ingest(config("release", tmp_path))
    assert len(items) == 6 and samples.split.tolist() == ["train", "train", "valid", "test"]


def test_release_split_with_a_header_only(tmp_path, caplog):
    release_pack(tmp_path)
    (tmp_path / "valid.csv").write_text((tmp_path / "valid.csv").read_text().splitlines()[0] + "\n")
    with caplog.at_level(logging.WARNING, logger="components.ingest.readers"):
        _, samples, _ = ingest(config("release", tmp_path))
    assert "valid.csv has a header but no rows" in caplog.text
    assert samples.split.tolist() == ["train", "train", "test"]


def test_release_nested_keys_may_repeat_across_items(tmp_path):
    """Duplicate detection is per object: every item has a 'title', and ids may look like fields."""
    items = {"title": {"title": "An item called title"}, "1": {"title": "One thing"}}
    (tmp_path / "item.json").write_text(json.dumps(items))
    (tmp_path / "test.csv").write_text("user_id,history_item_id,item_id\nu,['title'],1\n")
    items, samples, _ = ingest(config("release", tmp_path))
    assert set(items.item_id) == {"title", "1"} and samples.history.iloc[0] == ["title"]


def test_parquet_dictionary_encoded_and_integer_columns(tmp_path):
    titles = pa.array([f"Thing number {k}" for k in range(8)]).dictionary_encode()
    parquet_files(tmp_path, items=pa.table({"item_id": [f"i{k}" for k in range(8)], "title": titles,
                                            "brand": pa.nulls(8, pa.string())}))
    items, samples, _ = ingest(config("parquet", tmp_path, k_core=2))
    assert items.title.tolist()[0] == "Thing number 0" and items.brand.eq("").all() and len(samples) > 0


def test_parquet_integer_ids_in_both_files(tmp_path):
    inter = grid_interactions()
    ids = inter.item_id.str[1:].astype(int)
    parquet_files(tmp_path, items=pa.table({"item_id": list(range(8)), "title": [f"T {k}" for k in range(8)]}),
                  interactions=pa.table({"user_id": inter.user_id, "item_id": ids, "timestamp": inter.timestamp}))
    items, samples, _ = ingest(config("parquet", tmp_path, k_core=2))
    assert set(items.item_id) == {str(k) for k in range(8)} and set(samples.target) <= set(items.item_id)


def test_amazon23_details_that_are_not_an_object(tmp_path):
    meta = [{"parent_asin": f"i{k}", "title": f"Widget {k}", "details": {"Brand": "Acme"} if k else "n/a"}
            for k in range(8)]
    items, _, _ = ingest(config("amazon23", amazon23_files(tmp_path, meta=meta), k_core=2))
    assert items.set_index("item_id").brand.to_dict() == {"i0": "", **{f"i{k}": "Acme" for k in range(1, 8)}}
