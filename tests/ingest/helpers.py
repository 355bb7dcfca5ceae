"""Writers of small input files in each ingest format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from components.common.config import parse_section
from components.ingest.config import IngestConfig


def write_jsonl(path: Path, rows: list, gz: bool = True) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def config(fmt: str, source: Path | str, **preprocess) -> IngestConfig:
    pre = {"min_window_items": 0, "window_start": None, "window_end": None, **preprocess}
    return parse_section(IngestConfig, {"format": fmt, "source": str(source), "preprocess": pre}, "ingest")


def grid_interactions(n_users: int = 12, n_items: int = 8, per_user: int = 6, t0: int = 1_500_000_000):
    """Every user buys ``per_user`` items cycling through the catalog, a day apart."""
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append((f"u{u}", f"i{(u + k) % n_items}", t0 + (u * per_user + k) * 86400))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
