"""Ingest stage: raw catalog + interactions -> ``items``, ``samples`` and ``stats`` artifacts.

Artifact contracts (Parquet):

* items: item_id, title, description, brand, categories (list<string>)
  [+ upstream_sid when a release pack ships index.json]
* samples: user_id, history (list<string>, oldest first), target, timestamp (int64), split
* stats: JSON (counts per step, users, items, samples per split, history lengths, the
  source files with their digests)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from components.common import storage
from components.common.lineage import StageRun
from components.common.stage import Stage, StageContext
from components.ingest.config import IngestConfig
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog

log = logging.getLogger(__name__)

ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
    ("brand", pa.string()), ("categories", pa.list_(pa.string())),
])
SAMPLES_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("history", pa.list_(pa.string())), ("target", pa.string()),
    ("timestamp", pa.int64()), ("split", pa.string()),
])


def items_table(items: pd.DataFrame) -> pa.Table:
    schema = ITEMS_SCHEMA
    if "upstream_sid" in items.columns:
        schema = schema.append(pa.field("upstream_sid", pa.string()))
    return pa.Table.from_pandas(items[schema.names], schema=schema, preserve_index=False)


def samples_table(samples: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(samples[SAMPLES_SCHEMA.names], schema=SAMPLES_SCHEMA, preserve_index=False)


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


STAGE = Stage(
    name="ingest",
    config=IngestConfig,
    run=run,
    description="Read a catalog (amazon18 | amazon23 | release | parquet) and write items, samples "
                "and stats.",
    outputs={"items": "items.parquet", "samples": "samples.parquet", "stats": "stats.json"},
)
