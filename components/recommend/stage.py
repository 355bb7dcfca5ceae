"""Stage ``recommend``: the top-K items of every active user, by the model the run just promoted.

The recipe, top to bottom:

1. before any work: the decoding fits this step's hardware; the catalog (sid_map + item titles)
   and the users are read and checked: every user of ``samples`` with their history as of their
   last interaction (``recommend.active_within_days`` of the newest, ``max_users`` most recent),
   or the Parquet of active users ``recommend.users``; histories cut to the longest the model was
   trained on;
2. ``promote``'s decision: when it refused the model, there are no recommendations; the stage
   still succeeds and says so (an empty table whose metadata and the stats give the reason), so a
   scheduled run ends cleanly with the production model left in service;
3. the promoted model (its digest must be the one ``promote`` registered) decodes every history
   with the shared decoders (:mod:`components.common.decoding`: transformers, or vLLM on GPUs,
   ``recommend.shards`` processes like evaluation), trie-constrained over the live catalog;
4. each user's decoded SIDs become ``k`` live items with titles, exactly as the served model
   answers a request (:mod:`components.common.serving`); the table is written with lineage to the
   registered model version and the catalog snapshot (tables.py), and the stats.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from components.common import artifacts, serving, storage
from components.common.config import ConfigError
from components.common.errors import InputError
from components.common.lineage import StageRun, _mlflow
from components.common.modeling import local_model_dir
from components.common.serving import ServedCatalog, UserHistory
from components.common.stage import StageContext
from components.recommend.config import RecommendConfig
from components.recommend.tables import read_users, recommendations_table

log = logging.getLogger(__name__)

NAME = "recommend"
DAY_S = 86_400


def check_hardware(cfg: RecommendConfig) -> None:
    """CUDA decoding needs a GPU here; shards need as many GPUs as there are shards (as evaluation)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus and (cfg.engine == "vllm" or cfg.device == "cuda"):
        raise ConfigError(f"{NAME}.device/engine: CUDA decoding was requested but this step has no GPU; use device "
                          "auto/cpu and engine transformers (or give the step GPUs: resources.recommend.gpus)")
    if gpus and cfg.shards > gpus:
        raise ConfigError(f"{NAME}.shards: {cfg.shards} shards need as many GPUs, the step has {gpus} "
                          "(resources.recommend.gpus)")


def active_users(cfg: RecommendConfig, samples: artifacts.Samples, catalog: ServedCatalog,
                 max_history: int) -> list[UserHistory]:
    """Who is active (see the module docstring), the most recently active first."""
    if cfg.users is not None:
        users = read_users(cfg.users, catalog, max_history)
    else:
        users = serving.current_histories(samples, max_history)
        if cfg.active_within_days is not None:
            newest = users[0].last_timestamp
            users = [u for u in users if u.last_timestamp >= newest - cfg.active_within_days * DAY_S]
    if not users:
        raise InputError(f"{NAME}: no user to recommend for ({cfg.users or 'samples'})")
    return users


def run(cfg: RecommendConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    # 1. Hardware, catalog and users, before any model work.
    check_hardware(cfg)
    catalog_artifact = artifacts.read_catalog(inputs["sid_map"], inputs["items"])
    catalog = ServedCatalog.from_catalog(catalog_artifact)
    samples = artifacts.read_samples(inputs["samples"])
    max_history = serving.trained_history_length(samples)
    active = active_users(cfg, samples, catalog, max_history)
    users = active[: cfg.max_users] if cfg.max_users else active
    decision = storage.read_json(inputs["decision"])
    metadata = {"registered_model": decision.get("registered_model"), "model_version": decision.get("version"),
                "model_uri": decision.get("model_uri"), "model_digest": ctx.input_digests["model"],
                "sid_map_digest": ctx.input_digests["sid_map"], "items_digest": ctx.input_digests["items"],
                "mode": cfg.mode, "k": cfg.k, "run_key": ctx.run_key}
    stats: dict[str, Any] = {"source": cfg.users or "samples", "active_users": len(active), "max_history": max_history,
                             "k": cfg.k, "mode": cfg.mode, "beam_width": cfg.beam_width, "engine": cfg.engine,
                             "shards": cfg.shards, "catalog_live_items": catalog.live_items,
                             "model": {k: metadata[k] for k in ("registered_model", "model_version", "model_uri",
                                                                "model_digest")}}

    # 2. No promoted model: no recommendations, and the outputs say why.
    if not decision["promoted"]:
        reason = f"promotion refused: {decision['reason']}"
        log.info("%s: no recommendations (%s)", NAME, reason)
        return write(outputs, tracker, [], [], {**metadata, "recommended": False, "reason": reason},
                     {**stats, "recommended": False, "reason": reason, "users": 0})
    if decision.get("model_digest") != ctx.input_digests["model"]:
        raise InputError(f"input model {inputs['model']} (digest {ctx.input_digests['model'][:23]}) is not the model "
                         f"promote registered (digest {str(decision.get('model_digest'))[:23]}): pass this run's model")
    artifacts.check_model_vocabulary(inputs["model"], catalog_artifact)

    # 3. Decode every user's history with the promoted model.
    from components.common.decoding import decode_all

    cache_dir = Path(ctx.cache_uri) / "models" if not storage.is_gcs(ctx.cache_uri) else None
    model_dir = local_model_dir(inputs["model"], cache_dir)
    histories = [catalog.history_sids(u.history, f"user {u.user_id}") for u in users]
    log.info("%s: %d users, %s mode, k %d, beam %d, engine %s, %d shard(s), model %s v%s", NAME, len(users),
             cfg.mode, cfg.k, cfg.beam_width, cfg.engine, cfg.shards, metadata["registered_model"],
             metadata["model_version"])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sidreasoner-recommend-") as workdir:
        decoded = decode_all(str(model_dir), catalog.sids, histories, [cfg.mode], cfg.decoder_settings(),
                             shards=cfg.shards, seed=ctx.seed, workdir=Path(workdir))[cfg.mode]
    elapsed = time.perf_counter() - began

    # 4. Items, titles, lineage.
    rows = serving.response_rows([u.user_id for u in users], decoded, catalog, cfg.k)
    latency_ms = np.array([d.latency_s for d in decoded]) * 1000.0
    recommended = {item for row in rows for item in row["item_ids"]}
    stats.update({"recommended": True, "reason": f"promoted as {metadata['registered_model']} "
                                                 f"v{metadata['model_version']}",
                  "users": len(rows), "decode_s": elapsed, "users_per_s": len(rows) / max(elapsed, 1e-9),
                  "latency_ms_p50": float(np.percentile(latency_ms, 50)),
                  "latency_ms_p95": float(np.percentile(latency_ms, 95)),
                  "distinct_items": len(recommended), "catalog_coverage": len(recommended) / catalog.live_items})
    if decision.get("model_id"):  # the registered LoggedModel is an input of this run
        mlflow = _mlflow()
        mlflow.MlflowClient().log_inputs(tracker.run_id,
                                         models=[mlflow.entities.LoggedModelInput(decision["model_id"])])
    return write(outputs, tracker, users, rows, {**metadata, "recommended": True, "reason": stats["reason"]}, stats)


def write(outputs: Mapping[str, str], tracker: StageRun, users: list[UserHistory], rows: list[dict[str, Any]],
          metadata: Mapping[str, Any], stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    table = recommendations_table(users, rows, metadata)
    digest = storage.write_parquet(table, outputs["recommendations"])
    stats["outputs"] = {"recommendations": digest}
    stats_digest = storage.write_json(outputs["stats"], stats)
    tracker.log_metrics({k: v for k, v in stats.items() if k in ("users", "active_users", "decode_s", "users_per_s",
                                                                  "latency_ms_p50", "latency_ms_p95",
                                                                  "distinct_items", "catalog_coverage")})
    tracker.set_tags({"sidreasoner.recommendations": ("" if stats["recommended"] else "none: ") + stats["reason"]})
    tracker.log_dict(stats, "recommend_stats.json")
    return {"recommendations": {"digest": digest, "rows": table.num_rows, "recommended": stats["recommended"]},
            "stats": {"digest": stats_digest}}
