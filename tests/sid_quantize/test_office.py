"""The whole stage on the shared Office catalog (3,459 items; the upstream release has 15
duplicated SIDs): unique SIDs, measurements, determinism, and incremental assignment."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.sid import parse_sid, split_tokens, vocabulary
from components.sid_quantize.encoders import read_embeddings
from tests.sid_quantize.conftest import OFFICE_ENCODER, OFFICE_RQ_KMEANS, read_items, run_stage, write_items

# two threads: RQ-VAE training on more than one was not reproducible before deterministic_on_cpu
TINY_RQ_VAE = {"method": "rq_vae", "encoder": OFFICE_ENCODER, "cpu_threads": 2,
               "rq_vae": {"hidden_dims": [256, 128], "epochs": 20, "eval_every": 10, "warmup_epochs": 5,
                          "kmeans_init_iters": 30}}


def sid_map_of(outputs) -> pd.DataFrame:
    return pd.read_parquet(outputs["sid_map"])


def stats_of(outputs) -> dict:
    return json.loads(open(outputs["stats"]).read())


def test_office_sids_are_unique_measured_and_reproducible(office_items, office_embeddings, embedding_cache,
                                                          tracking_uri, tmp_path):
    section = {**OFFICE_RQ_KMEANS, "cpu_threads": 1}
    outputs, metadata = run_stage(section, office_items, tmp_path / "a", cache_uri=embedding_cache,
                                  tracking_uri=tracking_uri)
    sid_map = sid_map_of(outputs)
    assert len(sid_map) == 3459 and sid_map.item_id.is_unique
    assert sid_map.sid.is_unique  # the upstream release has 15 duplicated SIDs
    assert (sid_map.status == "active").all()
    assert all(parse_sid(sid) == tuple(codes) and len(codes) == 3 for sid, codes in zip(sid_map.sid, sid_map.codes))
    schema = pq.read_schema(outputs["sid_map"])
    assert schema.field("codes").type == pa.list_(pa.int32())
    assert schema.metadata[b"levels"] == b"3" and json.loads(schema.metadata[b"codebook_sizes"]) == [256] * 3

    stats = stats_of(outputs)
    assert stats["encoder"]["cache_hit"] is True  # embedded once by the session fixture, not again
    assert stats["upstream"]["duplicate_sids"] == 15
    assert stats["collisions_before"]["duplicate_sids"] > 0
    assert stats["collisions_after"] == {"duplicate_sids": 0, "items_in_collisions": 0, "collision_rate": 0.0,
                                         "collision_rate_recipe": 0.0, "max_items_per_sid": 1}
    resolution = stats["resolution"]
    assert resolution["reassigned"] == (resolution["resolved_by_sinkhorn"] + resolution["resolved_by_nearest_free"]
                                        + resolution["resolved_in_another_prefix"]) > 0
    for usage in stats["level_usage"]:
        assert 0.5 < usage["utilisation"] <= 1.0 and 1.0 < usage["perplexity"] <= 256
    assert stats["reconstruction"]["final"]["relative"] < 1.0
    semantic = stats["semantic_check"]
    assert semantic["attribute"] == "brand"  # the Office pack has no categories at all
    assert semantic["coverage"]["categories"] == 0.0
    assert semantic["p_share_given_same_code"] > semantic["p_share_random_pair"]
    assert semantic["lift"] > 2.0

    ids, vectors, meta = read_embeddings(outputs["embeddings"])
    assert ids == read_items(office_items).item_id.tolist() and vectors.shape == (3459, 384)
    assert meta["encoder_id"] == office_embeddings.metadata["encoder_id"]
    assert meta["text_digest"] == office_embeddings.metadata["text_digest"]
    assert metadata["embeddings"]["cache_hit"] is True
    config = json.loads((tmp_path / "a" / "codebooks" / "config.json").read_text())
    assert config["method"] == "rq_kmeans" and config["levels"] == 3 and config["codebook_sizes"] == [256] * 3
    assert config["seed"] == 42 and config["encoder"]["encoder_id"] == meta["encoder_id"]
    assert config["architecture"]["input_dim"] == 384

    again, _ = run_stage(section, office_items, tmp_path / "b", cache_uri=embedding_cache, tracking_uri=tracking_uri)
    assert sid_map_of(again).equals(sid_map)
    other_seed, _ = run_stage(section, office_items, tmp_path / "c", cache_uri=embedding_cache,
                              tracking_uri=tracking_uri, seed=7)
    assert not sid_map_of(other_seed).sid.equals(sid_map.sid)


def test_office_rq_vae_is_unique_and_reproducible(office_items, office_embeddings, embedding_cache, tracking_uri,
                                                  tmp_path):
    first, _ = run_stage(TINY_RQ_VAE, office_items, tmp_path / "a", cache_uri=embedding_cache,
                         tracking_uri=tracking_uri)
    second, _ = run_stage(TINY_RQ_VAE, office_items, tmp_path / "b", cache_uri=embedding_cache,
                          tracking_uri=tracking_uri)
    sid_map = sid_map_of(first)
    assert sid_map.sid.is_unique and len(sid_map) == 3459
    assert sid_map_of(second).equals(sid_map)
    stats = stats_of(first)
    assert stats["method"] == "rq_vae" and stats["training"]["best"]["epoch"] > 0
    assert stats["semantic_check"]["lift"] > 1.0
    assert (tmp_path / "a" / "codebooks" / "weights.safetensors").read_bytes() == \
        (tmp_path / "b" / "codebooks" / "weights.safetensors").read_bytes()


def test_incremental_assignment_keeps_retires_and_never_reuses(office_items, lookup_encoder, embedding_cache,
                                                               tracking_uri, tmp_path):
    items = read_items(office_items).drop(columns=["upstream_sid"])
    v1 = items.iloc[:3000]
    # v2: 200 items removed, 300 new ones (the end of the catalog)
    v2 = pd.concat([v1.iloc[200:], items.iloc[3000:3300]])
    # v3: one retired item comes back, 100 removed, the last 159 new
    v3 = pd.concat([items.iloc[[5]], v2.iloc[100:], items.iloc[3300:]])
    section = {**OFFICE_RQ_KMEANS, "cpu_threads": 1}
    run1, _ = run_stage(section, write_items(v1, tmp_path / "v1.parquet"), tmp_path / "run1",
                        cache_uri=embedding_cache, tracking_uri=tracking_uri)
    map1 = sid_map_of(run1)

    incremental = {**section, "incremental": {"previous_sid_map": run1["sid_map"],
                                              "previous_codebooks": run1["codebooks"]}}
    run2, _ = run_stage(incremental, write_items(v2, tmp_path / "v2.parquet"), tmp_path / "run2",
                        cache_uri=embedding_cache, tracking_uri=tracking_uri)
    map2 = sid_map_of(run2).set_index("item_id")
    old = map1.set_index("item_id")
    kept = v1.item_id.iloc[200:]
    assert (map2.loc[kept, "sid"] == old.loc[kept, "sid"]).all()
    assert (map2.loc[kept, "status"] == "active").all()
    new = items.item_id.iloc[3000:3300]
    assert (map2.loc[new, "status"] == "new").all()
    assert not set(map2.loc[new, "sid"]) & set(map1.sid)  # no new item takes a previous SID
    retired = v1.item_id.iloc[:200]
    assert (map2.loc[retired, "status"] == "retired").all()
    assert (map2.loc[retired, "sid"] == old.loc[retired, "sid"]).all()
    assert map2.sid.is_unique and len(map2) == 3300
    vocab = set(vocabulary([256] * 3))  # the token vocabulary does not grow
    assert all(set(split_tokens(sid)) <= vocab for sid in map2.sid)
    stats2 = stats_of(run2)
    assert stats2["mode"] == "incremental"
    assert {k: stats2["incremental"][k] for k in ("kept", "new", "retired", "revived", "retired_total")} == \
        {"kept": 2800, "new": 300, "retired": 200, "revived": 0, "retired_total": 200}
    assert stats2["collisions_after"]["duplicate_sids"] == 0
    assert stats2["items_assigned"] == 300
    assert (tmp_path / "run2" / "codebooks" / "weights.safetensors").read_bytes() == \
        (tmp_path / "run1" / "codebooks" / "weights.safetensors").read_bytes()
    config2 = json.loads((tmp_path / "run2" / "codebooks" / "config.json").read_text())
    assert config2["frozen_from"]["codebooks"] == run1["codebooks"] and config2["seed"] == 42

    incremental3 = {**section, "incremental": {"previous_sid_map": run2["sid_map"],
                                               "previous_codebooks": run2["codebooks"]}}
    run3, _ = run_stage(incremental3, write_items(v3, tmp_path / "v3.parquet"), tmp_path / "run3",
                        cache_uri=embedding_cache, tracking_uri=tracking_uri)
    map3 = sid_map_of(run3).set_index("item_id")
    revived = items.item_id.iloc[5]
    assert map3.loc[revived, "sid"] == old.loc[revived, "sid"] and map3.loc[revived, "status"] == "active"
    newest = items.item_id.iloc[3300:]
    ever = set(map1.sid) | set(map2.sid)
    assert not set(map3.loc[newest, "sid"]) & ever  # retired SIDs are never reused
    assert map3.sid.is_unique and (map3.loc[list(map2.index), "sid"] == map2.sid).all()
    counts = stats_of(run3)["incremental"]
    assert (counts["kept"], counts["new"], counts["revived"], counts["retired"]) == (3000, 159, 1, 100)
    assert counts["retired_total"] == 200 - 1 + 100
    catalog = map3[map3.status != "retired"]
    assert sorted(catalog.index) == sorted(v3.item_id)


@pytest.mark.parametrize("levels", [[256, 256], [256, 256, 256, 256]])
def test_incremental_refuses_codebooks_of_other_levels(levels, office_items, lookup_encoder, embedding_cache,
                                                       tracking_uri, tmp_path):
    from components.sid_quantize.quantizer import CodebooksError

    items = read_items(office_items).iloc[:600]
    section = {**OFFICE_RQ_KMEANS, "cpu_threads": 1, "rq_kmeans": {"iters": 5}}
    first, _ = run_stage(section, write_items(items, tmp_path / "v1.parquet"), tmp_path / "run1",
                         cache_uri=embedding_cache, tracking_uri=tracking_uri)
    bad = {**section, "codebook_sizes": levels,
           "incremental": {"previous_sid_map": first["sid_map"], "previous_codebooks": first["codebooks"]}}
    with pytest.raises(CodebooksError, match=r"codebook sizes \[256, 256, 256\] \(levels 3\)"):
        run_stage(bad, write_items(items, tmp_path / "v2.parquet"), tmp_path / "run2", cache_uri=embedding_cache,
                  tracking_uri=tracking_uri)
    assert not (tmp_path / "run2").exists()


def test_first_level_codes_group_brands(office_items):
    """The semantic check on its own: counted exactly, against a shuffled assignment."""
    from components.sid_quantize.config import SemanticCheckConfig
    from components.sid_quantize.metrics import semantic_check

    items = read_items(office_items)
    by_brand = items.brand.astype("category").cat.codes.to_numpy() % 64  # a code that follows the brand
    shuffled = np.random.default_rng(0).permutation(by_brand)
    cfg = SemanticCheckConfig()
    assert semantic_check(items, by_brand, cfg)["lift"] > 10
    assert semantic_check(items, shuffled, cfg)["lift"] == pytest.approx(1.0, abs=0.3)
