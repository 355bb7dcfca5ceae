"""Incremental assignment for scheduled retraining: the previous run's SIDs stay, the codebooks
are frozen, new items get fresh unique SIDs, removed items are retired (and their SIDs never
reused). The token vocabulary therefore stays that of the previous run, so the next training can
warm-start from the previous model.

An item that comes back after being retired gets its own old SID back (``revived``): a SID
always denotes the same item, so this is not reuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from components.common import artifacts, storage
from components.sid_quantize.config import SidQuantizeConfig
from components.sid_quantize.quantizer import CodebooksError, Quantizer, load_quantizer
from components.sid_quantize.sid_map import SidMap


@dataclass
class Previous:
    quantizer: Quantizer
    config: dict[str, Any]
    sid_map: SidMap
    sid_space: str
    """The SID space of the previous codebooks and sid_map (they must agree)."""


def load_previous(cfg: SidQuantizeConfig, device: torch.device) -> Previous:
    """Load the previous run's codebooks and sid_map, checking they fit the configured levels."""
    codebooks_uri, sid_map_uri = cfg.incremental.previous_codebooks, cfg.incremental.previous_sid_map
    assert codebooks_uri is not None and sid_map_uri is not None  # checked by IncrementalConfig
    if not storage.exists(codebooks_uri):
        raise CodebooksError(f"sid_quantize.incremental.previous_codebooks: {codebooks_uri} does not exist")
    with storage.local_copy(codebooks_uri) as path:
        if not path.is_dir():
            raise CodebooksError(f"{codebooks_uri}: a codebooks artifact is a folder, not a file")
        quantizer, config = load_quantizer(path, device)
    where = f"previous codebooks {codebooks_uri}"
    if config["method"] != cfg.method:
        raise CodebooksError(f"{where}: method {config['method']} but sid_quantize.method is {cfg.method}")
    if config["codebook_sizes"] != cfg.codebook_sizes:
        raise CodebooksError(f"{where}: codebook sizes {config['codebook_sizes']} (levels {config['levels']}) but "
                             f"sid_quantize.codebook_sizes is {cfg.codebook_sizes}; incremental assignment keeps "
                             "the previous levels (set codebook_sizes to match, or run without incremental)")
    if config.get("sid_space") is None:
        raise CodebooksError(f"{where}: config.json records no sid_space (not written by this pipeline's "
                             "sid_quantize); its SIDs cannot be bound to a sid_map")
    sid_map, sid_space = SidMap.read(sid_map_uri, cfg.codebook_sizes)
    artifacts.check_same_sid_space({"previous codebooks": (codebooks_uri, config["sid_space"]),
                                    "previous sid_map": (sid_map_uri, sid_space)})
    return Previous(quantizer, config, sid_map, config["sid_space"])


def check_embeddings_match(previous: Previous, encoder_id: str, settings: dict[str, Any], dim: int) -> None:
    """The new catalog must be embedded exactly as the previous one (same space, same size)."""
    where = "previous codebooks"
    old = previous.config.get("encoder", {})
    if old.get("encoder_id") != encoder_id or old.get("settings") != settings:
        raise CodebooksError(f"{where} were trained on embeddings from {old.get('encoder_id')} with "
                             f"{old.get('settings')}; this run embeds with {encoder_id} and {settings}. Frozen "
                             "codebooks only fit the encoder they were trained with")
    if previous.quantizer.architecture()["input_dim"] != dim:
        raise CodebooksError(f"{where} take {previous.quantizer.architecture()['input_dim']}-d embeddings; this "
                             f"run's embeddings are {dim}-d")


@dataclass
class Plan:
    """Which current items keep a SID and which need one; which previous rows retire."""

    kept: dict[str, int] = field(default_factory=dict)
    """item_id -> row of the previous sid_map (active/new there, still in the catalog)."""
    revived: dict[str, int] = field(default_factory=dict)
    """item_id -> row of a previously retired item back in the catalog (gets its SID back)."""
    new: list[str] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    """Rows of the previous sid_map that are (now or still) retired."""
    newly_retired: int = 0


def plan(previous: SidMap, catalog_ids: list[str]) -> Plan:
    in_catalog = set(catalog_ids)
    rows = {item: row for row, item in enumerate(previous.item_ids)}
    result = Plan()
    for item in catalog_ids:
        row = rows.get(item)
        if row is None:
            result.new.append(item)
        elif previous.statuses[row] == "retired":
            result.revived[item] = row
        else:
            result.kept[item] = row
    for row, item in enumerate(previous.item_ids):
        if item not in in_catalog:
            result.retired.append(row)
            result.newly_retired += previous.statuses[row] != "retired"
    return result
