"""Bad input gets a clear error naming the file, line, row or field, and no partial output."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.errors import InputError
from components.common.stage import StageContext
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog
from components.ingest.stage import STAGE
from tests.ingest.helpers import config, grid_interactions, write_jsonl


def ingest(cfg):
    return preprocess(read_catalog(cfg), cfg.preprocess)


def amazon18(tmp_path, meta=None, reviews=None):
    meta = meta if meta is not None else [{"asin": f"i{k}", "title": f"Item number {k}"} for k in range(8)]
    if reviews is None:
        reviews = [{"reviewerID": r.user_id, "asin": r.item_id, "unixReviewTime": int(r.timestamp)}
                   for r in grid_interactions().itertuples()]
    write_jsonl(tmp_path / "meta.json.gz", meta)
    write_jsonl(tmp_path / "reviews.json.gz", reviews)
    return config("amazon18", tmp_path, k_core=2)


def test_valid_baseline(tmp_path):
    items, samples, _ = ingest(amazon18(tmp_path))
    assert len(items) == 8 and len(samples) > 0


def test_missing_file(tmp_path):
    write_jsonl(tmp_path / "meta.json.gz", [{"asin": "a", "title": "A thing"}])
    with pytest.raises(InputError, match=r"ingest\.files\.reviews: .*reviews\.json\.gz"):
        ingest(config("amazon18", tmp_path))


def test_malformed_json_line_names_file_and_line(tmp_path):
    reviews = [{"reviewerID": "u", "asin": "i0", "unixReviewTime": 1}] * 3 + ['{"reviewerID": "u", "asin": ']
    with pytest.raises(InputError, match=r"reviews\.json\.gz line 4: malformed JSON"):
        ingest(amazon18(tmp_path, reviews=reviews))


def test_uncompressed_json_lines_work_too(tmp_path):
    cfg = amazon18(tmp_path)
    raw = gzip.decompress((tmp_path / "reviews.json.gz").read_bytes())
    (tmp_path / "reviews.json").write_bytes(raw)
    cfg = config("amazon18", tmp_path, k_core=2).model_copy(update={"files": {"reviews": "reviews.json"}})
    assert len(ingest(cfg)[1]) > 0


def test_duplicate_item_ids(tmp_path):
    meta = [{"asin": "i0", "title": "One"}, {"asin": "i1", "title": "Two"}, {"asin": "i0", "title": "Again"}]
    with pytest.raises(InputError, match=r"meta\.json\.gz: duplicate item id 'i0' at lines 1 and 3"):
        ingest(amazon18(tmp_path, meta=meta))


def test_missing_field_names_line(tmp_path):
    reviews = [{"reviewerID": "u", "asin": "i0", "unixReviewTime": 5}, {"reviewerID": "u", "asin": "i1"}]
    with pytest.raises(InputError, match=r"line 2: missing field 'unixReviewTime'"):
        ingest(amazon18(tmp_path, reviews=reviews))


@pytest.mark.parametrize("bad", ["abc", None, float("nan"), -5])
def test_unparseable_or_nan_timestamp(tmp_path, bad):
    reviews = [{"reviewerID": "u", "asin": "i0", "unixReviewTime": 5}, {"reviewerID": "u", "asin": "i1",
                                                                        "unixReviewTime": bad}]
    with pytest.raises(InputError, match=r"line 2: (unixReviewTime .* is not a unix timestamp|missing field)"):
        ingest(amazon18(tmp_path, reviews=reviews))


def test_empty_titles_are_errors_when_not_filtering(tmp_path):
    meta = [{"asin": f"i{k}", "title": f"Item {k}" if k != 5 else ""} for k in range(8)]
    cfg = amazon18(tmp_path, meta=meta)
    assert len(ingest(cfg)[0]) == 7  # the recipe's filter drops it
    strict = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"title_filter": False})})
    with pytest.raises(InputError, match=r"meta\.json\.gz: 1 item\(s\) with an invalid title.*'i5'"):
        ingest(strict)


def test_empty_result_after_filtering(tmp_path):
    cfg = amazon18(tmp_path)
    cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"k_core": 50})})
    with pytest.raises(InputError, match=r"reviews\.json\.gz: the 50-core leaves no interaction.*Lower ingest\.preprocess\.k_core$"):
        ingest(cfg)


def _parquet(tmp_path, items=None, interactions=None):
    inter = grid_interactions()
    pq.write_table(interactions if interactions is not None else pa.table(
        {"user_id": inter.user_id, "item_id": inter.item_id, "timestamp": inter.timestamp}),
        tmp_path / "interactions.parquet")
    pq.write_table(items if items is not None else pa.table(
        {"item_id": [f"i{k}" for k in range(8)], "title": [f"T {k}" for k in range(8)]}),
        tmp_path / "items.parquet")
    return config("parquet", tmp_path, k_core=2)


def test_parquet_missing_or_misspelled_column(tmp_path):
    items = pa.table({"item_id": ["i0"], "tittle": ["typo"]})
    with pytest.raises(InputError, match=r"items\.parquet: missing column 'title'.*ingest\.columns\.title"):
        ingest(_parquet(tmp_path, items=items))


def test_parquet_duplicate_ids(tmp_path):
    items = pa.table({"item_id": ["i0", "i1", "i0"], "title": ["a b", "c d", "e f"]})
    with pytest.raises(InputError, match=r"duplicate item id 'i0' at rows 0 and 2"):
        ingest(_parquet(tmp_path, items=items))


def test_parquet_empty_title(tmp_path):
    items = pa.table({"item_id": ["i0", "i1"], "title": ["ok title", ""]})
    with pytest.raises(InputError, match=r"items\.parquet: 1 item\(s\) with an empty title.*'i1'"):
        ingest(_parquet(tmp_path, items=items))


def test_parquet_nan_and_unparseable_timestamps(tmp_path):
    inter = pa.table({"user_id": ["u", "u"], "item_id": ["i0", "i1"], "timestamp": [1.0, float("nan")]})
    with pytest.raises(InputError, match=r"interactions\.parquet: column timestamp has 1 NaN/null value\(s\) \(first at row 1\)"):
        ingest(_parquet(tmp_path, interactions=inter))
    inter = pa.table({"user_id": ["u", "u"], "item_id": ["i0", "i1"], "timestamp": ["2018-01-01", "yesterday"]})
    with pytest.raises(InputError, match=r"column timestamp row 1: 'yesterday' is not a timestamp"):
        ingest(_parquet(tmp_path, interactions=inter))


def test_parquet_wrong_type_file(tmp_path):
    _parquet(tmp_path)
    (tmp_path / "items.parquet").write_text("not parquet")
    with pytest.raises(Exception, match=r"items\.parquet: not a readable Parquet file"):
        ingest(config("parquet", tmp_path))


def test_release_unknown_history_item(tmp_path):
    (tmp_path / "item.json").write_text(json.dumps({"1": {"title": "A b"}, "2": {"title": "C d"}}))
    (tmp_path / "test.csv").write_text("user_id,history_item_id,item_id\nu,[1],2\nu,\"[1, 9]\",2\n")
    with pytest.raises(InputError, match=r"test\.csv line 3: item '9' is not in"):
        ingest(config("release", tmp_path))


def test_release_malformed_history(tmp_path):
    (tmp_path / "item.json").write_text(json.dumps({"1": {"title": "A b"}}))
    (tmp_path / "valid.csv").write_text("user_id,history_item_id,item_id\nu,[1,1\n")
    with pytest.raises(InputError, match=r"valid\.csv line 2: column history_item_id is not a list"):
        ingest(config("release", tmp_path))


def test_release_without_any_split(tmp_path):
    (tmp_path / "item.json").write_text(json.dumps({"1": {"title": "A b"}}))
    with pytest.raises(InputError, match="no split file found"):
        ingest(config("release", tmp_path))


def test_stage_failure_leaves_no_output(tmp_path, mlflow_server):
    reviews = [{"reviewerID": "u", "asin": "i0", "unixReviewTime": 5}, "{broken"]
    cfg = amazon18(tmp_path / "in", reviews=reviews)
    out = tmp_path / "out"
    out.mkdir()
    ctx = StageContext(run_key="cli-bad", pipeline_name="t", profile="t", config_hash="x",
                       tracking_uri=mlflow_server, experiment="ingest-bad", cache_uri=str(tmp_path / "c"),
                       seed=1, final_stage="ingest")
    outputs = {name: str(out / fname) for name, fname in STAGE.outputs.items()}
    with pytest.raises(InputError, match="line 2: malformed JSON"):
        STAGE.execute(cfg, ctx, {}, outputs)
    assert list(out.iterdir()) == []
