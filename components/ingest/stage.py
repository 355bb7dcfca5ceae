"""Ingest stage: raw catalog + interactions -> ``items``, ``samples`` and ``stats`` artifacts.

Artifact contracts: ``items`` and ``samples`` (:mod:`components.common.artifacts`; items carry
``upstream_sid`` when a release pack ships index.json); ``stats`` JSON (counts per step, users,
items, samples per split, history lengths, the source files with their digests).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from components.common import storage
from components.common.artifacts import items_table, samples_table
from components.common.lineage import StageRun
from components.common.stage import StageContext
from components.ingest.config import IngestConfig
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog

log = logging.getLogger(__name__)

def run(cfg: IngestConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    raw = read_catalog(cfg)
    sources = {role: {"uri": uri, "digest": storage.digest(uri)} for role, uri in raw.sources.items()}
    for role, src in sources.items():  # the catalog snapshot this run was built from
        tracker.log_dataset(f"raw_{role}", src["uri"], src["digest"], context="input")
    items, samples, stats = preprocess(raw, cfg.preprocess, resplit=cfg.resplit)
    stats = {"format": cfg.format, "sources": sources,
             "catalog_digest": storage.bytes_digest("".join(sorted(s["digest"] for s in sources.values())).encode()),
             **stats}

    # Validate everything before publishing anything, then publish all three outputs.
    items_tbl, samples_tbl = items_table(items), samples_table(samples)
    digests = {
        "items": storage.write_parquet(items_tbl, outputs["items"]),
        "samples": storage.write_parquet(samples_tbl, outputs["samples"]),
    }
    stats["outputs"] = digests
    digests["stats"] = storage.write_json(outputs["stats"], stats)

    tracker.log_metrics({k: v for k, v in stats.items() if k not in ("sources", "outputs")})
    tracker.log_dict(stats, "ingest_stats.json")
    tracker.set_tags({"sidreasoner.catalog_digest": stats["catalog_digest"]})
    log.info("ingest: %d items, %d users, samples %s", stats["items"], stats["users"], stats["samples"])
    return {
        "items": {"digest": digests["items"], "rows": items_tbl.num_rows},
        "samples": {"digest": digests["samples"], "rows": samples_tbl.num_rows},
        "stats": {"digest": digests["stats"]},
    }
