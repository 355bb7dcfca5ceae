"""Ingest throughput: the amazon18 reader + preprocessing vs a bare json.loads loop over the
same gzipped files (the floor any reader pays), on a synthetic catalog of ~100k reviews."""

from __future__ import annotations

import gzip
import json
import tempfile

from benchmarks.harness import best_of
from components.common.config import parse_section
from components.ingest.config import IngestConfig
from components.ingest.demo_data import write_demo_data
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_data(tmp, n_items=3000, n_users=11000, seed=1)
        cfg = parse_section(IngestConfig, {"format": "amazon18", "source": tmp,
                                           "preprocess": {"min_window_items": 100}}, "ingest")

        def bare_parse() -> int:
            n = 0
            for name in ("meta.json.gz", "reviews.json.gz"):
                with gzip.open(f"{tmp}/{name}", "rt") as fh:
                    for line in fh:
                        json.loads(line)
                        n += 1
            return n

        def ingest() -> dict:
            return preprocess(read_catalog(cfg), cfg.preprocess)[2]

        base_s, lines = best_of(bare_parse)
        ingest_s, stats = best_of(ingest)
    return {
        "lines": lines,
        "reviews": stats["interactions_raw"],
        "samples": stats["samples"]["total"],
        "bare_json_s": base_s,
        "ingest_s": ingest_s,
        "summary": {
            "ingest_reviews_per_s": round(stats["interactions_raw"] / ingest_s),
            "ingest_vs_bare_json_time_ratio": round(ingest_s / base_s, 2),
        },
    }
