"""The backbone alignment starts from: a saved HF causal LM (local or gs://), or a tiny one
built offline from the run's own text (``sidreasoner tiny-backbone``), extended with the
catalog's SID tokens."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from components.common import modeling, prompts, sid, storage
from components.align_sft.data import Catalog
from components.common.config import ConfigError

log = logging.getLogger(__name__)

_ITEM_TEXT = ("title", "description", "brand")


def backbone_texts(items_uri: str, corpus_uri: str | None = None) -> Iterator[str]:
    """Text to train a tiny tokenizer on: item fields, corpus turns and narratives, and the
    recommendation prompts; SID tokens are blanked (they are added as whole tokens later)."""
    items = storage.read_parquet(items_uri)
    for row in items.to_pylist():
        for key in _ITEM_TEXT:
            if row.get(key):
                yield row[key]
        if row.get("categories"):
            yield " ".join(row["categories"])
    if corpus_uri is not None:
        corpus = storage.read_parquet(corpus_uri, columns=["messages", "text"])
        for row in corpus.to_pylist():
            for message in row["messages"] or []:
                yield sid.TOKEN_RE.sub(" ", message["content"] or "")
            if row["text"]:
                yield sid.TOKEN_RE.sub(" ", row["text"])
    yield from (prompts.DIRECT_SYSTEM, prompts.DIRECT_USER, prompts.REASONING_SYSTEM, prompts.REASONING_USER)


def build_tiny(out: str | Path, items_uri: str, corpus_uri: str | None, *, seed: int, **shape: int) -> Path:
    """A tiny Qwen3 backbone whose tokenizer is trained on the catalog and corpus text."""
    return modeling.build_tiny_backbone(out, backbone_texts(items_uri, corpus_uri), seed=seed, **shape)


def check_backbone_uri(uri: str, key: str) -> None:
    """Config-time check of a backbone URI: it exists and holds a causal LM."""
    try:
        modeling.check_causal_lm(uri)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def extend_with_sids(source: str | Path, out: Path, tokens: Sequence[str], cache_dir: Path,
                     seed: int = 0) -> tuple[int, list[int]]:
    """Load ``source``, add the SID ``tokens`` (normal tokens, mean-resized embeddings drawn
    with ``seed``), save to ``out``; returns (tokens added, ids of the added tokens)."""
    import torch

    model, tokenizer = modeling.load_causal_lm(source, cache_dir=cache_dir)
    before = len(tokenizer)
    torch.manual_seed(seed)
    added = modeling.add_sid_tokens(model, tokenizer, tokens)
    new_ids = list(range(before, len(tokenizer)))
    modeling.save_backbone(model, tokenizer, out)
    log.info("backbone %s: %d SID tokens added (vocabulary %d -> %d)", source, added, before, len(tokenizer))
    return added, new_ids


def check_model_vocabulary(model_uri: str, catalog: Catalog, what: str) -> None:
    """The model must know every SID token of the catalog (it was aligned on this sid_map)."""
    try:
        vocab = set(json.loads(storage.read_text(storage.join(model_uri, modeling.SID_VOCAB_FILE))))
    except storage.StorageError:
        raise ConfigError(f"{what} {model_uri}: no {modeling.SID_VOCAB_FILE} (not a model of this pipeline)") from None
    missing = sorted(set(catalog.tokens) - vocab)
    if missing:
        raise ConfigError(f"{what} {model_uri}: lacks {len(missing)} SID token(s) of the sid_map "
                          f"(e.g. {missing[:3]}); was it trained on another sid_map?")
