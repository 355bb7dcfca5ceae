"""Every input format, end to end through the ingest stage's reader and preprocessing."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.common.config import parse_section
from components.ingest.config import IngestConfig
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog
from tests.ingest.helpers import amazon23_files, config, grid_interactions, release_pack


def run_ingest(cfg: IngestConfig):
    return preprocess(read_catalog(cfg), cfg.preprocess, resplit=cfg.resplit)


def check_contracts(items: pd.DataFrame, samples: pd.DataFrame, max_history: int = 10):
    assert items.item_id.is_unique
    assert (items.title.str.len() > 0).all()
    known = set(items.item_id)
    assert samples.target.isin(known).all()
    assert samples.history.map(lambda h: 1 <= len(h) <= max_history and set(h) <= known).all()
    assert set(samples.split) <= {"train", "valid", "test"}
    order = {"train": 0, "valid": 1, "test": 2}
    ranks = samples.split.map(order).to_numpy()
    ts = samples.timestamp.to_numpy()
    for a, b in [(0, 1), (1, 2)]:
        if (ranks == a).any() and (ranks == b).any():
            assert ts[ranks == a].max() <= ts[ranks == b].min()


def test_amazon18_demo_catalog(demo_data):
    cfg = parse_section(IngestConfig, {"format": "amazon18", "source": str(demo_data),
                                       "preprocess": {"min_window_items": 50}}, "ingest")
    items, samples, stats = run_ingest(cfg)
    check_contracts(items, samples)
    assert stats["items_dropped_title"] == {"empty": 1, "too_long": 1, "span_markup": 1}
    assert stats["window"]["in_window"] < stats["interactions_known_items"]  # out-of-window reviews dropped
    counts = stats["samples"]
    assert counts["train"] == int(counts["total"] * 0.8)
    assert abs(counts["valid"] - counts["total"] * 0.1) <= 1
    assert set(items.columns) >= {"item_id", "title", "description", "brand", "categories"}
    assert items.categories.map(lambda c: "Office Products" in c).all()


def test_amazon23_raw(tmp_path):
    amazon23_files(tmp_path)
    items, samples, _ = run_ingest(config("amazon23", tmp_path, k_core=2))
    check_contracts(items, samples)
    row = items.set_index("item_id").loc["i1"]
    assert row.title == "Widget & Gadget 1" and row.brand == "Brand1"
    assert row.description == "Great widget for desks" and row.categories == ["Office", "Desk"]
    assert samples.timestamp.max() < 2_000_000_000  # milliseconds became seconds


def test_generic_parquet_with_column_mapping(tmp_path):
    inter = grid_interactions()
    inter["when"] = pd.to_datetime(inter.timestamp, unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")
    pq.write_table(pa.table({"uid": inter.user_id, "sku": inter.item_id, "when": inter["when"]}),
                   tmp_path / "interactions.parquet")
    pq.write_table(pa.table({"sku": [f"i{k}" for k in range(8)], "name": [f"Thing {k}" for k in range(8)],
                             "categories": [["A", "B"]] * 8}), tmp_path / "items.parquet")
    cfg = parse_section(IngestConfig, {
        "format": "parquet", "source": str(tmp_path),
        "columns": {"user_id": "uid", "item_id": "sku", "timestamp": "when", "title": "name"},
        "preprocess": {"window_start": None, "window_end": None, "min_window_items": 0, "k_core": 2},
    }, "ingest")
    items, samples, _ = run_ingest(cfg)
    check_contracts(items, samples)
    assert samples.timestamp.min() == inter.timestamp.iloc[1]  # string datetimes -> unix seconds
    assert items.brand.eq("").all() and items.categories.iloc[0] == ["A", "B"]


def test_release_pack_with_all_splits(tmp_path):
    items, samples, stats = run_ingest(config("release", release_pack(tmp_path)))
    check_contracts(items, samples)
    assert samples.split.tolist() == ["train", "train", "valid", "test"]
    assert samples.history.iloc[3] == ["3", "4", "4"]
    assert items.set_index("item_id").loc["2", "description"] == "desc 2"
    assert items.set_index("item_id").loc["2", "upstream_sid"] == "<a_2><b_0><c_1>"
    assert stats["timestamp_kind"] == "ordinal" and stats["missing_splits"] == []


def test_release_pack_missing_train_split(tmp_path):
    items, samples, stats = run_ingest(config("release", release_pack(tmp_path, with_train=False)))
    assert stats["missing_splits"] == ["train"]
    assert samples.split.tolist() == ["valid", "test"]
    assert len(items) == 6  # the whole catalog, including items no sample mentions


def test_shared_office_pack(office_pack):
    cfg = parse_section(IngestConfig, {"format": "release", "source": str(office_pack)}, "ingest")
    items, samples, stats = run_ingest(cfg)
    check_contracts(items, samples)
    assert len(items) == 3459
    assert stats["samples"] == {"train": 0, "valid": 4866, "test": 4866, "total": 9732}
    assert stats["missing_splits"] == ["train"]
    assert abs(samples[samples.split == "test"].history.map(len).mean() - 4.97) < 0.01
    assert samples.history.map(len).max() == 10
    assert items.upstream_sid.duplicated().sum() == 15  # the upstream release's SID collisions


def test_shared_office_pack_resplit(office_pack):
    cfg = parse_section(IngestConfig, {"format": "release", "source": str(office_pack), "resplit": True},
                        "ingest")
    _, samples, stats = run_ingest(cfg)
    assert stats["samples"]["train"] == int(9732 * 0.8)
    # valid.csv rows are older than test.csv rows, so the new test split is drawn from test.csv
    assert samples[samples.split == "test"].timestamp.min() >= 4866
