"""Bad input gets a clear error naming the file, item, field or setting, and no output at all."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.config import ConfigError, parse_section
from components.common.errors import InputError
from components.sid_quantize.config import SidQuantizeConfig
from components.sid_quantize.encoders import EmbeddingError
from components.sid_quantize.quantizer import CodebooksError
from components.sid_quantize.stage import QuantizeError
from tests.sid_quantize.conftest import hashed_vectors, run_stage, synthetic_items, write_items

SMALL = {"method": "rq_kmeans", "codebook_sizes": [8, 8, 8], "cpu_threads": 1, "rq_kmeans": {"iters": 10}}


@pytest.fixture
def stage(tmp_path, tracking_uri):
    """Run the stage into ``tmp_path/<name>`` with an embeddings cache in ``tmp_path/cache``."""

    def go(section, items_uri, name="out"):
        return run_stage(section, items_uri, tmp_path / name, cache_uri=str(tmp_path / "cache"),
                         tracking_uri=tracking_uri)

    return go


def fails(stage, tmp_path, section, items_uri, error, match):
    with pytest.raises(error, match=match):
        stage(section, items_uri)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_valid_baseline(stage, hashed_encoder, tmp_path):
    outputs, metadata = stage(SMALL, write_items(synthetic_items(100), tmp_path / "items.parquet"))
    assert metadata["sid_map"]["rows"] == 100 and len(hashed_encoder) == 1


def test_empty_catalog(stage, hashed_encoder, tmp_path):
    fails(stage, tmp_path, SMALL, write_items(synthetic_items(1).iloc[:0], tmp_path / "items.parquet"), InputError,
          r"items .*items\.parquet: no rows")


def test_missing_column_and_wrong_id_type(stage, hashed_encoder, tmp_path):
    items = synthetic_items(20)
    pq.write_table(pa.Table.from_pandas(items.drop(columns=["brand"]), preserve_index=False), tmp_path / "a.parquet")
    fails(stage, tmp_path, SMALL, str(tmp_path / "a.parquet"), InputError,
          r"input items .*a\.parquet: missing column\(s\) \['brand'\]")
    items["item_id"] = range(20)
    pq.write_table(pa.Table.from_pandas(items, preserve_index=False), tmp_path / "b.parquet")
    fails(stage, tmp_path, SMALL, str(tmp_path / "b.parquet"), InputError,
          "column 'item_id' has type int64, expected string")


def test_duplicate_item_ids(stage, hashed_encoder, tmp_path):
    items = synthetic_items(20)
    items.loc[7, "item_id"] = "i3"
    fails(stage, tmp_path, SMALL, write_items(items, tmp_path / "items.parquet"), InputError,
          r"items\.parquet row 7: duplicate item_id 'i3'")


def test_items_with_empty_text(stage, hashed_encoder, tmp_path):
    items = synthetic_items(30)
    items.loc[[4, 9], "description"] = ""
    section = {**SMALL, "encoder": {"text_fields": ["description"]}}
    fails(stage, tmp_path, section, write_items(items, tmp_path / "items.parquet"), EmbeddingError,
          r"2 item\(s\) have empty text in fields \['description'\], e.g. item_id \['i4', 'i9'\]")


def test_nan_and_inf_embeddings(stage, monkeypatch, tmp_path):
    from components.sid_quantize import encoders

    def broken(texts, cfg):
        vectors = hashed_vectors(texts)
        vectors[3, 0], vectors[11, 2] = np.nan, np.inf
        return vectors

    monkeypatch.setattr(encoders, "encode_texts", broken)
    fails(stage, tmp_path, SMALL, write_items(synthetic_items(40), tmp_path / "items.parquet"), EmbeddingError,
          r"2 embedding\(s\) contain NaN or inf, e.g. item_id \['i3', 'i11'\]")
    assert not list((tmp_path / "cache").rglob("*.parquet"))  # bad vectors are never cached


def test_fewer_items_than_a_codebook_and_more_than_the_codebooks_hold(stage, hashed_encoder, tmp_path):
    items_uri = write_items(synthetic_items(20), tmp_path / "items.parquet")
    fails(stage, tmp_path, {**SMALL, "codebook_sizes": [32, 8]}, items_uri, QuantizeError,
          r"the catalog has 20 items but sid_quantize.codebook_sizes is \[32, 8\]")
    fails(stage, tmp_path, {**SMALL, "codebook_sizes": [4, 4]}, items_uri, QuantizeError,
          r"express only 16 distinct SIDs")
    assert hashed_encoder == []  # refused before any embedding work


@pytest.mark.parametrize("section, match", [
    ({"codebook_sizes": []}, "must list 1 to 10 levels"),
    ({"codebook_sizes": [256, 1]}, "every level needs at least 2 codes"),
    ({"codebook_sizes": [2] * 11}, "must list 1 to 10 levels"),
    ({"method": "rq_means"}, "sid_quantize.method"),
    ({"encoder": {"text_fields": ["title", "price"]}}, "sid_quantize.encoder.text_fields: must be distinct names"),
    ({"incremental": {"previous_sid_map": "gs://b/sid_map"}}, "must be set together"),
    ({"rq_vae": {"lr": 0}}, "sid_quantize.rq_vae.lr"),
    ({"collisions": {"sinkhorn_epsilon": -1.0}}, "sid_quantize.collisions.sinkhorn_epsilon"),
    ({"semantic_check": {"attribute": "color"}}, "sid_quantize.semantic_check.attribute"),
    ({"rq_vae": {"batch_size": 128}}, "rq_vae.batch_size 128 is smaller than a codebook"),
])
def test_impossible_config_is_rejected_before_any_work(section, match):
    with pytest.raises(ConfigError, match=match):
        parse_section(SidQuantizeConfig, section, "sid_quantize")


def test_incremental_with_other_embeddings(stage, hashed_encoder, monkeypatch, tmp_path):
    from components.sid_quantize import encoders

    items = synthetic_items(100)
    first, _ = stage(SMALL, write_items(items, tmp_path / "v1.parquet"), name="first")
    incremental = {**SMALL, "incremental": {"previous_sid_map": first["sid_map"],
                                            "previous_codebooks": first["codebooks"]}}
    v2 = write_items(synthetic_items(110), tmp_path / "v2.parquet")
    fails(stage, tmp_path, {**incremental, "encoder": {"max_length": 64}}, v2, CodebooksError,
          "only fit the encoder they were trained with")
    monkeypatch.setattr(encoders, "encode_texts", lambda texts, cfg: hashed_vectors(texts, dim=8))
    fails(stage, tmp_path, incremental, v2, CodebooksError, "take 16-d embeddings; this run's embeddings are 8-d")


def test_incremental_with_a_broken_previous_run(stage, hashed_encoder, tmp_path):
    first, _ = stage(SMALL, write_items(synthetic_items(100), tmp_path / "v1.parquet"), name="first")
    v2 = write_items(synthetic_items(110), tmp_path / "v2.parquet")
    sid_map = pq.read_table(first["sid_map"]).to_pandas()
    sid_map.at[5, "codes"], sid_map.at[5, "sid"] = sid_map.codes[4], sid_map.sid[4]
    pq.write_table(pa.Table.from_pandas(sid_map, preserve_index=False), tmp_path / "dup.parquet")
    section = {**SMALL, "incremental": {"previous_sid_map": str(tmp_path / "dup.parquet"),
                                        "previous_codebooks": first["codebooks"]}}
    fails(stage, tmp_path, section, v2, InputError, r"dup\.parquet row 5 \(item 'i5'\): SID .* already belongs to row 4")
    section["incremental"]["previous_codebooks"] = str(tmp_path / "nowhere")
    fails(stage, tmp_path, section, v2, CodebooksError, "previous_codebooks: .*nowhere does not exist")
    section["incremental"]["previous_codebooks"] = first["sid_map"]
    fails(stage, tmp_path, section, v2, CodebooksError, "a codebooks artifact is a folder, not a file")


def test_incremental_run_that_would_need_more_sids_than_the_codebooks_hold(stage, hashed_encoder, tmp_path):
    section = {**SMALL, "codebook_sizes": [4, 4, 4]}
    first, _ = stage(section, write_items(synthetic_items(40), tmp_path / "v1.parquet"), name="first")
    section["incremental"] = {"previous_sid_map": first["sid_map"], "previous_codebooks": first["codebooks"]}
    calls = len(hashed_encoder)
    fails(stage, tmp_path, section, write_items(synthetic_items(30, prefix="n"), tmp_path / "v2.parquet"),
          QuantizeError, r"40 SIDs of the previous run .* need 70 distinct SIDs; .* express only 64")
    assert len(hashed_encoder) == calls  # refused before embedding


def test_incremental_refuses_codebooks_of_another_quantization_run(stage, hashed_encoder, tmp_path, tracking_uri):
    """Sizes that match are not enough: a sid_map is bound to the codebooks that made it."""
    items = write_items(synthetic_items(100), tmp_path / "v1.parquet")
    first, _ = stage(SMALL, items, name="first")
    other, _ = run_stage(SMALL, items, tmp_path / "other", cache_uri=str(tmp_path / "cache"),
                         tracking_uri=tracking_uri, seed=7)
    section = {**SMALL, "incremental": {"previous_sid_map": first["sid_map"], "previous_codebooks": other["codebooks"]}}
    fails(stage, tmp_path, section, write_items(synthetic_items(110), tmp_path / "v2.parquet"), InputError,
          r"previous sid_map .*first/sid_map\.parquet is of SID space \S+, but previous codebooks .*other/codebooks "
          r"is of SID space \S+: they come from different quantization runs")
