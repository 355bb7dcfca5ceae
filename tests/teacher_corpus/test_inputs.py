"""Bad inputs get a clear error naming the artifact, column and row, before any output."""

from __future__ import annotations

import pyarrow as pa
import pytest

from components.common import storage
from components.common.artifacts import read_catalog
from components.common.errors import InputError
from components.teacher_corpus.data import read_train_samples
from components.teacher_corpus.stage import run
from tests.teacher_corpus.helpers import (
    RecordingTracker,
    config,
    context,
    items_table,
    outputs,
    samples_table,
    sid_map_table,
    toy_samples,
    write_inputs,
)


def _replace(path: str, table: pa.Table) -> None:
    storage.write_parquet(table, path)


def _read(paths):
    catalog = read_catalog(paths["sid_map"], paths["items"])
    return read_train_samples(paths["samples"], catalog)


def test_missing_column(tmp_path):
    paths = write_inputs(tmp_path)
    _replace(paths["items"], items_table(14).drop_columns(["brand"]))
    with pytest.raises(InputError, match=r"items .*items\.parquet: missing column\(s\) \['brand'\]"):
        _read(paths)


def test_duplicate_catalog_sid(tmp_path):
    paths = write_inputs(tmp_path)
    table = sid_map_table([f"i{k}" for k in range(14)]).to_pylist()
    table[5]["sid"], table[5]["codes"] = table[4]["sid"], table[4]["codes"]
    _replace(paths["sid_map"], pa.Table.from_pylist(table, schema=sid_map_table(["x"]).schema))
    with pytest.raises(InputError, match=r"row 5 \(item 'i5'\): SID <a_0><b_0><c_4> already belongs to row 4"):
        _read(paths)


def test_retired_items_leave_the_catalog_and_their_samples(tmp_path):
    paths = write_inputs(tmp_path)
    table = sid_map_table([f"i{k}" for k in range(14)]).to_pylist()
    table[5].update(status="retired")  # its SID stays its own: a SID is never reused
    _replace(paths["sid_map"], pa.Table.from_pylist(table, schema=sid_map_table(["x"]).schema))
    train, stats = _read(paths)
    assert all("i5" not in (*s.history, s.target) for s in train) and stats["train_dropped_retired_item"] > 0


@pytest.mark.parametrize("field, value, message", [
    ("sid", "<a_1><c_2><b_3>", r"row 2 \(item 'i2'\): not a SID"),
    ("codes", [9, 9, 9], r"row 2 \(item 'i2'\): codes \[9, 9, 9\] do not match sid"),
    ("status", "deleted", r"row 2 \(item 'i2'\): status 'deleted' is not one of"),
    ("sid", "<a_0><b_0>", r"row 2 \(item 'i2'\): 2 levels, expected 3"),
])
def test_bad_sid_map_rows(tmp_path, field, value, message):
    paths = write_inputs(tmp_path)
    rows = sid_map_table([f"i{k}" for k in range(14)]).to_pylist()
    rows[2][field] = value
    if field == "sid" and value == "<a_0><b_0>":
        rows[2]["codes"] = [0, 0]
    _replace(paths["sid_map"], pa.Table.from_pylist(rows, schema=sid_map_table(["x"]).schema))
    with pytest.raises(InputError, match=message):
        _read(paths)


def test_sid_without_item_metadata(tmp_path):
    paths = write_inputs(tmp_path)
    _replace(paths["sid_map"], sid_map_table([f"i{k}" for k in range(15)]))
    with pytest.raises(InputError, match=r"1 catalog item\(s\) have no row in items .*\(e.g. \['i14'\]\)"):
        _read(paths)


def test_train_sample_with_an_item_unknown_to_the_sid_map(tmp_path):
    rows = toy_samples() + [("u9", ["i1", "ghost"], "i2", 1, "train")]
    paths = write_inputs(tmp_path, samples=rows)
    with pytest.raises(InputError, match=r"samples .* row 30: item\(s\) \['ghost'\] are not in the sid_map"):
        _read(paths)


@pytest.mark.parametrize("rows, message", [
    ([("u1", ["i1"], "i2", 1, "holdout")], r"row 0: split 'holdout' is not one of \['train', 'valid', 'test'\]"),
    ([("u1", ["i1"], "i2", 1, "test")], r"no train samples \(splits: \{'train': 0, 'valid': 0, 'test': 1\}\)"),
    ([("u1", [], "i2", 1, "train")], r"row 0: history must be a non-empty list"),
    ([("u1", ["i1"], "", 1, "train")], r"row 0: target must be a non-empty string"),
])
def test_bad_samples(tmp_path, rows, message):
    paths = write_inputs(tmp_path, samples=rows)
    with pytest.raises(InputError, match=message):
        _read(paths)


def test_invalid_input_writes_no_output(tmp_path):
    paths = write_inputs(tmp_path / "in")
    _replace(paths["samples"], samples_table([("u1", ["i1"], "i2", 1, "valid")]))
    out = outputs(tmp_path / "out")
    with pytest.raises(InputError, match="no train samples"):
        run(config(teacher={"backend": "offline"}), context(tmp_path), paths, out, RecordingTracker())
    assert not (tmp_path / "out").exists()


def test_litellm_backend_needs_its_key_before_any_work(tmp_path, monkeypatch):
    from components.teacher_corpus.teacher import TeacherError

    monkeypatch.delenv("MISSING_TEACHER_KEY", raising=False)
    paths = write_inputs(tmp_path / "in")
    cfg = config(teacher={"api_key_env": "MISSING_TEACHER_KEY", "api_base": "http://127.0.0.1:9/v1"})
    with pytest.raises(TeacherError, match=r"environment variable MISSING_TEACHER_KEY is not set"):
        run(cfg, context(tmp_path), paths, outputs(tmp_path / "out"), RecordingTracker())
    assert not (tmp_path / "out").exists()
