"""Fixtures of the sid_quantize tests: the Office catalog embedded once per session (MiniLM on
CPU, texts cut to 32 tokens to keep it to tens of seconds), a session embeddings cache the stage
runs hit, stand-in encoders (a lookup of those Office embeddings for sub- and super-sets of the
catalog; hashed random unit vectors for synthetic catalogs), and a helper that runs the whole
stage with a local MLflow store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.common import artifacts, storage
from components.common.artifacts import items_table
from components.common.config import parse_section
from components.common.stage import StageContext
from components.ingest.config import IngestConfig
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog
from components.sid_quantize import STAGE
from components.sid_quantize.config import EncoderConfig, SidQuantizeConfig
from components.sid_quantize.encoders import Embeddings, embed_items


def read_items(uri: str):
    """The items artifact as the stage reads it (a DataFrame)."""
    return artifacts.read_items(uri).frame()


#: Encoder settings of every Office test (the cache key includes them).
OFFICE_ENCODER = {"max_length": 32}
#: Fast quantizer settings for the Office catalog (3,459 items).
OFFICE_RQ_KMEANS = {"method": "rq_kmeans", "encoder": OFFICE_ENCODER, "rq_kmeans": {"iters": 30}}


@pytest.fixture(scope="session")
def office_items(office_pack, tmp_path_factory) -> str:
    """The shared Office release pack through ingest (format release): an items artifact."""
    cfg = parse_section(IngestConfig, {"format": "release", "source": str(office_pack)}, "ingest")
    items, _, _ = preprocess(read_catalog(cfg), cfg.preprocess, resplit=cfg.resplit)
    path = tmp_path_factory.mktemp("office") / "items.parquet"
    storage.write_parquet(items_table(items), path)
    return str(path)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture(scope="session")
def office_embeddings(office_items, embedding_cache) -> Embeddings:
    """The one real embedding of the Office catalog; stage runs with OFFICE_ENCODER and
    ``embedding_cache`` read it back from the cache."""
    return embed_items(read_items(office_items), EncoderConfig(**OFFICE_ENCODER), embedding_cache)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def run_stage(section: dict[str, Any], items: str, out: Path, *, cache_uri: str, tracking_uri: str,
              seed: int = 42) -> tuple[dict[str, str], dict[str, dict]]:
    """Run the whole stage (config validation, MLflow run, all outputs); returns (outputs, metadata)."""
    cfg = parse_section(SidQuantizeConfig, section, "sid_quantize")
    ctx = StageContext(run_key=f"cli-test-{out.name}", pipeline_name="t", profile="test", config_hash="x",
                       tracking_uri=tracking_uri, experiment="sid-quantize-tests", cache_uri=cache_uri, seed=seed,
                       final_stage="sid_quantize")
    outputs = {name: str(out / kind.file) for name, kind in STAGE.outputs.items()}
    return outputs, STAGE.execute(cfg, ctx, {"items": items}, outputs)


@pytest.fixture
def lookup_encoder(office_embeddings, office_items, monkeypatch):
    """Replace the encoder by a lookup of the session's Office embeddings (text -> vector), so
    tests on sub- and super-sets of the catalog do not run MiniLM again."""
    from components.sid_quantize import encoders

    items = read_items(office_items)
    texts = encoders.item_texts(items, EncoderConfig(**OFFICE_ENCODER).text_fields)
    table = dict(zip(texts, office_embeddings.vectors))

    def encode(batch, cfg):
        return np.stack([table[text] for text in batch])

    monkeypatch.setattr(encoders, "encode_texts", encode)
    return table


def hashed_vectors(texts: list[str], dim: int = 16) -> np.ndarray:
    """A stand-in encoder: a unit vector seeded by each text's hash (same text, same vector)."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(dim)
        out[row] = vector / np.linalg.norm(vector)
    return out


@pytest.fixture
def hashed_encoder(monkeypatch):
    """Replace the encoder by :func:`hashed_vectors`; returns the list of calls (texts per call)."""
    from components.sid_quantize import encoders

    calls: list[list[str]] = []

    def encode(texts, cfg):
        calls.append(list(texts))
        return hashed_vectors(texts)

    monkeypatch.setattr(encoders, "encode_texts", encode)
    return calls


def synthetic_items(n: int, prefix: str = "i") -> pd.DataFrame:
    """``n`` items with distinct titles, brands cycling over 4 and one category path each."""
    return pd.DataFrame({
        "item_id": [f"{prefix}{k}" for k in range(n)],
        "title": [f"Product {prefix}{k} model {k * 7919 % 1000}" for k in range(n)],
        "description": [f"Description of item {k}" for k in range(n)],
        "brand": [f"Brand{k % 4}" for k in range(n)],
        "categories": [["Office Products", f"Kind{k % 3}"] for k in range(n)],
    })


def write_items(items: pd.DataFrame, path: Path) -> str:
    storage.write_parquet(items_table(items), path)
    return str(path)
