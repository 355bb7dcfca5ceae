"""SID quantization stage: ``items`` -> ``embeddings``, ``sid_map``, ``codebooks``, ``stats``.

Fresh run: embed the catalog (cached), train the configured quantizer (RQ-VAE or RQ-KMeans),
take greedy codes, make them unique (components.sid_quantize.collisions), measure.
Incremental run (``incremental.previous_*`` set): keep the previous SIDs, encode only new items
with the frozen codebooks, retire removed items (components.sid_quantize.incremental).

Artifacts:

* embeddings: Parquet item_id, embedding (fixed_size_list<float32>); metadata encoder_id,
  text_digest, encoder_settings (components.sid_quantize.encoders).
* sid_map: Parquet item_id, codes (list<int32>), sid, status in {active, new, retired}
  (components.sid_quantize.sid_map). Every row has a distinct SID.
* codebooks: folder, ``weights.safetensors`` + ``config.json`` (method, levels, codebook_sizes,
  architecture incl. input_dim, seed, encoder id and settings, collision settings, training
  summary). ``levels`` is the SID length; ``codebook_sizes`` gives the token vocabulary.
* stats: JSON. ``levels``/``codebook_sizes``; ``collisions_before`` (greedy codes of the items
  assigned in this run) and ``collisions_after`` (every sid_map row; always 0 duplicates);
  ``resolution`` (items handled by each step of components.sid_quantize.collisions);
  ``level_usage`` (per level: used codes, utilisation, perplexity, max share, over the
  catalog); ``reconstruction`` (greedy and final codes: MSE and fraction of variance left);
  ``semantic_check`` (which attribute, lift of sharing it within a first-level code over random
  pairs); ``encoder`` (id, text digest, cache hit); ``training``; ``incremental`` (kept, new,
  revived, retired counts); ``upstream`` (a release pack's own SID duplicates); ``seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.common import artifacts, storage
from components.common.errors import InputError
from components.common.lineage import StageRun
from components.common.registry import continued_from
from components.common.stage import StageContext
from components.sid_quantize import metrics
from components.sid_quantize.collisions import resolve_collisions
from components.sid_quantize.config import IncrementalConfig, SidQuantizeConfig
from components.sid_quantize.encoders import embed_items, encoder_settings
from components.sid_quantize.incremental import Previous, check_embeddings_match, load_previous, plan
from components.sid_quantize.quantizer import Quantizer, rq_encode, save_quantizer
from components.sid_quantize.rq_kmeans import train_rq_kmeans
from components.sid_quantize.rq_vae import train_rq_vae
from components.sid_quantize.runtime import deterministic_on_cpu, resolve_device, torch_threads
from components.sid_quantize.sid_map import SidMap

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_id", "title", "description", "brand", "categories")


class QuantizeError(InputError):
    """Bad input or a config that cannot work on this catalog; the message says which."""


def _check_catalog_fits(cfg: SidQuantizeConfig, item_ids: list[str], previous: Previous | None) -> None:
    """Refuse, before any work, a catalog the codebooks cannot fit or hold."""
    n = len(item_ids)
    if previous is None and n < max(cfg.codebook_sizes):
        raise QuantizeError(f"the catalog has {n} items but sid_quantize.codebook_sizes is {cfg.codebook_sizes}: "
                            "every code of a level needs at least one item to be fitted; lower codebook_sizes")
    if n > cfg.capacity:
        raise QuantizeError(f"the catalog has {n} items but codebook_sizes {cfg.codebook_sizes} express only "
                            f"{cfg.capacity} distinct SIDs; raise codebook_sizes")
    if previous is not None:
        known = set(previous.sid_map.item_ids)
        needed = len(known) + sum(item not in known for item in item_ids)
        if needed > cfg.capacity:
            raise QuantizeError(f"{len(known)} SIDs of the previous run (retired ones are never reused) plus the "
                                f"new items need {needed} distinct SIDs; codebook_sizes {cfg.codebook_sizes} "
                                f"express only {cfg.capacity}. Retrain without incremental to grow the codebooks")


def _train(cfg: SidQuantizeConfig, x: torch.Tensor, seed: int) -> tuple[Quantizer, dict[str, Any]]:
    with deterministic_on_cpu(x.device):  # the same SIDs from the same embeddings, whatever the thread count
        if cfg.method == "rq_kmeans":
            return train_rq_kmeans(x, cfg.codebook_sizes, cfg.rq_kmeans, cfg.collisions, seed)
        return train_rq_vae(x, cfg.codebook_sizes, cfg.rq_vae, seed)


def continue_previous_run(cfg: SidQuantizeConfig, inputs: Mapping[str, str], tracker: StageRun) -> SidQuantizeConfig:
    """With a production model found by ``previous_model``, assign incrementally from its run."""
    previous = continued_from(inputs, "quantizing from scratch")
    if previous is None:
        return cfg
    if cfg.incremental.enabled:
        raise QuantizeError("sid_quantize.incremental is set and scheduled retraining found a production "
                            f"model ({previous.reason}): set only one of them")
    tracker.set_tags({"sidreasoner.previous_model": f"{previous.registered_model} v{previous.version}"})
    log.info("continuing the SIDs of %s", previous.reason)
    return cfg.model_copy(update={"incremental": IncrementalConfig(
        previous_sid_map=previous.sid_map_uri, previous_codebooks=previous.codebooks_uri)})


def run(cfg: SidQuantizeConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    items = artifacts.read_items(inputs["items"]).frame()
    cfg = continue_previous_run(cfg, inputs, tracker)
    device = resolve_device(cfg.device)
    previous = load_previous(cfg, device) if cfg.incremental.enabled else None
    _check_catalog_fits(cfg, items["item_id"].tolist(), previous)
    with torch_threads(cfg.cpu_threads):
        emb, quantizer, sid_map, stats, codebooks_config = _quantize(cfg, ctx, items, inputs["items"], device,
                                                                     previous)

    codebooks_config.update({
        "encoder": {"model": cfg.encoder.model, "encoder_id": emb.metadata["encoder_id"],
                    "settings": encoder_settings(cfg.encoder)},
        "collisions": cfg.collisions.model_dump(mode="json"),
    })

    # Everything is computed; publish the four outputs (each one atomically). The codebooks come
    # first: their weights' digest is the SID space the sid_map records.
    with storage.staged_dir(outputs["codebooks"]) as folder:
        sid_space = save_quantizer(quantizer, folder, codebooks_config)
    digests = {"codebooks": storage.digest(outputs["codebooks"]),
               "embeddings": storage.write_parquet(emb.table(), outputs["embeddings"]),
               "sid_map": storage.write_parquet(sid_map.table(cfg.codebook_sizes, sid_space), outputs["sid_map"])}
    stats["sid_space"] = sid_space
    stats["outputs"] = dict(digests)
    digests["stats"] = storage.write_json(outputs["stats"], stats)

    tracker.log_metrics(_metric_view(stats))
    tracker.log_dict(stats, "sid_stats.json")
    log.info("sid_quantize: %d items, %d sid_map rows, items in collisions %d -> %d, semantic lift %s",
             stats["items"], len(sid_map.item_ids), stats["collisions_before"]["items_in_collisions"],
             stats["collisions_after"]["items_in_collisions"], stats["semantic_check"].get("lift"))
    return {
        "embeddings": {"digest": digests["embeddings"], "rows": stats["items"], "dim": stats["embedding_dim"],
                       "encoder_id": emb.metadata["encoder_id"], "cache_hit": emb.cache_hit},
        "sid_map": {"digest": digests["sid_map"], "rows": len(sid_map.item_ids), "levels": len(cfg.codebook_sizes)},
        "codebooks": {"digest": digests["codebooks"], "method": quantizer.method,
                      "codebook_sizes": ",".join(map(str, cfg.codebook_sizes))},
        "stats": {"digest": digests["stats"]},
    }


def _quantize(cfg: SidQuantizeConfig, ctx: StageContext, items: pd.DataFrame, items_uri: str, device: torch.device,
              previous: Previous | None):
    """Embed, train (fresh) or load (incremental) the quantizer, assign unique SIDs, measure."""
    seconds: dict[str, float] = {}
    item_ids = items["item_id"].tolist()
    start = time.perf_counter()
    emb = embed_items(items, cfg.encoder, ctx.cache_uri, items_uri, ctx.cpu_kernels)
    seconds["embed"] = time.perf_counter() - start
    x = torch.from_numpy(emb.vectors).to(device)

    start = time.perf_counter()
    if previous is None:
        quantizer, training = _train(cfg, x, ctx.seed)
        codebooks_config = {"seed": ctx.seed, "training": training,
                            "settings": getattr(cfg, cfg.method).model_dump(mode="json")}
    else:
        check_embeddings_match(previous, emb.metadata["encoder_id"], encoder_settings(cfg.encoder), x.shape[1])
        quantizer, training = previous.quantizer, None
        codebooks_config = {k: v for k, v in previous.config.items()
                            if k not in ("format_version", "method", "levels", "codebook_sizes", "architecture")}
        codebooks_config["frozen_from"] = {"codebooks": cfg.incremental.previous_codebooks,
                                           "sid_map": cfg.incremental.previous_sid_map}
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    codebooks = [c.detach() for c in quantizer.codebooks]
    z = quantizer.latents(x)
    greedy = rq_encode(z, codebooks)
    if previous is None:
        final, resolution = resolve_collisions(z, greedy, codebooks, cfg.collisions)
        sid_map = SidMap(item_ids, final, ["active"] * len(item_ids))
        assigned, incremental = np.arange(len(item_ids)), None
    else:
        sid_map, assigned, resolution, incremental = _assign_incremental(cfg, previous, item_ids, z, greedy, codebooks)
    seconds["assign"] = time.perf_counter() - start

    stats = _measure(cfg, items, emb, x, quantizer, greedy, sid_map, assigned, resolution)
    stats.update({"mode": "fresh" if previous is None else "incremental", "seed": ctx.seed, "training": training,
                  "incremental": incremental, "seconds": {k: round(v, 3) for k, v in seconds.items()}})
    return emb, quantizer, sid_map, stats, codebooks_config


def _assign_incremental(cfg: SidQuantizeConfig, previous: Previous, item_ids: list[str], z: torch.Tensor,
                        greedy: torch.Tensor, codebooks: list[torch.Tensor]):
    """Kept and revived items keep their SID; new items get unique ones with the frozen
    codebooks, avoiding every SID the previous map holds (retired included)."""
    old = previous.sid_map
    p = plan(old, item_ids)
    position = {item: i for i, item in enumerate(item_ids)}
    new_index = np.array([position[item] for item in p.new], dtype=np.int64)
    occupied = set(map(tuple, old.codes.tolist()))
    codes = np.empty((len(item_ids), len(codebooks)), dtype=np.int64)
    statuses = [""] * len(item_ids)
    for item, row in (*p.kept.items(), *p.revived.items()):
        codes[position[item]] = old.codes[row]
        statuses[position[item]] = "active"
    resolution: dict[str, int] = {}
    if len(new_index):
        index = torch.from_numpy(new_index).to(z.device)
        codes[new_index], resolution = resolve_collisions(z[index], greedy[index], codebooks, cfg.collisions, occupied)
        for i in new_index:
            statuses[i] = "new"
    retired_ids = [old.item_ids[row] for row in p.retired]
    sid_map = SidMap(item_ids + retired_ids, np.concatenate([codes, old.codes[p.retired].reshape(-1, len(codebooks))]),
                     statuses + ["retired"] * len(retired_ids))
    counts = {"kept": len(p.kept), "new": len(p.new), "revived": len(p.revived), "retired": p.newly_retired,
              "retired_total": len(p.retired), "previous_rows": len(old.item_ids),
              "previous_codebooks": cfg.incremental.previous_codebooks,
              "previous_sid_map": cfg.incremental.previous_sid_map}
    log.info("incremental: kept %d, new %d, revived %d, retired %d (total retired %d)", counts["kept"],
             counts["new"], counts["revived"], counts["retired"], counts["retired_total"])
    return sid_map, new_index, resolution, counts


def _measure(cfg: SidQuantizeConfig, items: pd.DataFrame, emb, x: torch.Tensor, quantizer: Quantizer,
             greedy: torch.Tensor, sid_map: SidMap, assigned: np.ndarray, resolution: dict[str, int]) -> dict[str, Any]:
    """The stats artifact's measurements (see the module docstring)."""
    n = len(items)
    catalog_codes = sid_map.codes[:n]
    greedy_np = greedy.cpu().numpy()
    before = metrics.collisions(greedy_np[assigned]) if len(assigned) else metrics.collisions(greedy_np[:0])
    before["collided_with_existing"] = resolution.get("collided_with_existing", 0)
    after = metrics.collisions(sid_map.codes)
    if after["duplicate_sids"]:  # an invariant every downstream stage relies on
        raise AssertionError(f"sid_quantize produced {after['duplicate_sids']} duplicate SIDs")
    x_np = x.cpu().numpy()
    final_codes = torch.from_numpy(catalog_codes).to(x.device)
    stats: dict[str, Any] = {
        "method": quantizer.method, "levels": len(cfg.codebook_sizes), "codebook_sizes": cfg.codebook_sizes,
        "items": n, "sid_rows": len(sid_map.item_ids), "embedding_dim": int(x.shape[1]),
        "encoder": {"encoder_id": emb.metadata["encoder_id"], "text_digest": emb.metadata["text_digest"],
                    "cache_hit": emb.cache_hit, "cache_uri": emb.cache_uri},
        "items_assigned": int(len(assigned)),
        "collisions_before": before, "resolution": resolution, "collisions_after": after,
        "level_usage": metrics.level_usage(catalog_codes, cfg.codebook_sizes),
        "reconstruction": {
            "greedy": metrics.reconstruction(x_np, quantizer.reconstruct(greedy).cpu().numpy()),
            "final": metrics.reconstruction(x_np, quantizer.reconstruct(final_codes).cpu().numpy()),
        },
        "semantic_check": metrics.semantic_check(items, catalog_codes[:, 0], cfg.semantic_check),
    }
    if "upstream_sid" in items.columns:  # a release pack's own SIDs, for comparison
        upstream = items["upstream_sid"].dropna()
        stats["upstream"] = {"items_with_sid": int(len(upstream)), "duplicate_sids": int(upstream.duplicated().sum())}
    return stats


def _metric_view(stats: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth a chart in MLflow."""
    view: dict[str, Any] = {
        "items": stats["items"], "sid_rows": stats["sid_rows"],
        "collisions_before": stats["collisions_before"], "collisions_after": stats["collisions_after"],
        "resolution": stats["resolution"], "reconstruction": stats["reconstruction"],
        "seconds": stats["seconds"], "embeddings_cache_hit": int(stats["encoder"]["cache_hit"]),
    }
    for usage in stats["level_usage"]:
        view[f"level_{usage['level']}"] = {k: usage[k] for k in ("utilisation", "perplexity", "used", "max_share")}
    semantic = stats["semantic_check"]
    if semantic.get("lift") is not None:
        view["semantic"] = {k: semantic[k] for k in ("lift", "p_share_given_same_code", "p_share_random_pair")}
    if stats["incremental"]:
        view["incremental"] = {k: v for k, v in stats["incremental"].items() if isinstance(v, int)}
    return view
