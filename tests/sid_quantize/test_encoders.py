"""Item text, the real encoder (bundled MiniLM, or a model folder on gs://), and the embeddings
cache in object storage keyed by encoder + text digest."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common import storage
from components.sid_quantize import encoders
from components.sid_quantize.config import EncoderConfig
from components.sid_quantize.encoders import embed_items, item_texts, read_embeddings, text_digest
from tests.sid_quantize.conftest import run_stage, synthetic_items, write_items


def test_item_text_joins_non_empty_fields():
    items = synthetic_items(2)
    items.loc[1, "description"] = None
    assert item_texts(items, ["title", "description", "categories"]) == [
        "Product i0 model 0 Description of item 0 Office Products, Kind0",
        "Product i1 model 919 Office Products, Kind1",
    ]


def test_text_digest_ignores_order_but_not_content():
    ids, texts = ["a", "b"], ["x", "y"]
    assert text_digest(ids, texts) == text_digest(ids[::-1], texts[::-1])
    assert text_digest(ids, texts) != text_digest(ids, ["x", "y "])
    assert text_digest(ids, texts) != text_digest(["a", "c"], texts)


def test_bundled_minilm_with_a_gcs_cache(gcs_bucket, monkeypatch):
    items = synthetic_items(12)
    cache = f"{gcs_bucket}/cache"
    cfg = EncoderConfig()
    first = embed_items(items, cfg, cache)
    assert not first.cache_hit and first.cache_uri.startswith(f"{cache}/embeddings/")
    assert first.vectors.shape == (12, 384) and first.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-4)  # MiniLM normalises
    assert first.metadata["encoder_id"].startswith("builtin:all-minilm-l6-v2@sha256:")
    assert storage.exists(first.cache_uri)

    def no_encoder(texts, cfg):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(encoders, "encode_texts", no_encoder)
    shuffled = items.sample(frac=1.0, random_state=0)
    second = embed_items(shuffled, cfg, cache)  # same catalog in another order: still a hit
    assert second.cache_hit and second.item_ids == shuffled.item_id.tolist()
    assert np.array_equal(second.vectors, first.vectors[shuffled.index.to_numpy()])
    changed = items.copy()
    changed.loc[3, "title"] = "A different product"
    with pytest.raises(AssertionError, match="the cache should have answered"):
        embed_items(changed, cfg, cache)
    with pytest.raises(AssertionError, match="the cache should have answered"):
        embed_items(items, EncoderConfig(max_length=16), cache)  # other settings, other key
    with pytest.raises(AssertionError, match="the cache should have answered"):
        embed_items(items, cfg, cache, cpu_kernels="reproducible")  # other kernels' last bits, other key
    with pytest.raises(AssertionError, match="the cache should have answered"):
        embed_items(items, EncoderConfig(use_cache=False), cache)


def test_plain_huggingface_encoder_from_gcs(gcs_bucket, tmp_path):
    """A model folder uploaded to gs:// (here a tiny random BERT with MiniLM's tokenizer, i.e. a
    plain HF model: sentence-transformers adds mean pooling)."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(encoders.builtin_model_path() / name, folder / name)
    uri = f"{gcs_bucket}/models/tiny-bert"
    digest = storage.copy(str(folder), uri)
    cfg = EncoderConfig(model=uri, batch_size=4, device="cpu", dtype="bfloat16")
    result = embed_items(synthetic_items(10), cfg, None)
    assert result.vectors.shape == (10, 32) and result.vectors.dtype == np.float32
    assert not result.cache_hit and result.cache_uri is None
    assert result.metadata["encoder_id"] == f"{uri}@{digest}"
    with pytest.raises(encoders.EmbeddingError, match="does not exist"):
        embed_items(synthetic_items(3), EncoderConfig(model=f"{gcs_bucket}/models/missing"), None)


def test_stage_does_not_re_embed_an_unchanged_catalog(hashed_encoder, tmp_path, tracking_uri):
    section = {"method": "rq_kmeans", "codebook_sizes": [8, 8], "cpu_threads": 1, "rq_kmeans": {"iters": 5}}
    items = write_items(synthetic_items(60), tmp_path / "items.parquet")
    cache = str(tmp_path / "cache")
    first, meta1 = run_stage(section, items, tmp_path / "a", cache_uri=cache, tracking_uri=tracking_uri)
    second, meta2 = run_stage(section, items, tmp_path / "b", cache_uri=cache, tracking_uri=tracking_uri)
    assert len(hashed_encoder) == 1  # the encoder ran once
    assert (meta1["embeddings"]["cache_hit"], meta2["embeddings"]["cache_hit"]) == (False, True)
    assert read_embeddings(first["embeddings"])[1].tobytes() == read_embeddings(second["embeddings"])[1].tobytes()
    schema = pq.read_schema(second["embeddings"])
    assert schema.field("embedding").type == pa.list_(pa.float32(), 16)  # fixed size
    assert {b"encoder_id", b"text_digest", b"encoder_settings"} <= set(schema.metadata)
    run_stage(section, write_items(synthetic_items(61), tmp_path / "more.parquet"), tmp_path / "c", cache_uri=cache,
              tracking_uri=tracking_uri)
    assert len(hashed_encoder) == 2  # a changed catalog is embedded again


def test_stage_cli_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "components.sid_quantize", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--items" in out and "sid_map.parquet" in out and "codebooks" in out
