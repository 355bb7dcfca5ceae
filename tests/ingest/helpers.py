"""Writers of small, valid input files in each ingest format (tests change one thing to make
them bad)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
    """Every user buys ``per_user`` items cycling through the catalog, a day apart (from July
    2017 by default: inside the recipe's review window, and 5-core as it is)."""
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append((f"u{u}", f"i{(u + k) % n_items}", t0 + (u * per_user + k) * 86400))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def amazon18_files(root: Path, meta: list | None = None, reviews: list | None = None) -> Path:
    """``meta.json.gz`` (8 items i0..i7) and ``reviews.json.gz`` (the grid) under ``root``."""
    if meta is None:
        meta = [{"asin": f"i{k}", "title": f"Item number {k}"} for k in range(8)]
    if reviews is None:
        reviews = [{"reviewerID": r.user_id, "asin": r.item_id, "unixReviewTime": int(r.timestamp)}
                   for r in grid_interactions().itertuples()]
    write_jsonl(root / "meta.json.gz", meta)
    write_jsonl(root / "reviews.json.gz", reviews)
    return root


def amazon23_files(root: Path, meta: list | None = None, reviews: list | None = None) -> Path:
    """``meta.jsonl.gz`` and ``reviews.jsonl.gz`` (timestamps in milliseconds) under ``root``."""
    if meta is None:
        meta = [{"parent_asin": f"i{k}", "title": f"Widget &amp; Gadget {k}", "store": f"Brand{k % 3}",
                 "description": ["<b>Great</b> widget", "for desks"], "categories": ["Office", "Desk"],
                 "details": {"Color": "red"}} for k in range(8)]
    if reviews is None:
        reviews = [{"user_id": r.user_id, "parent_asin": r.item_id, "asin": "child", "rating": 5.0, "text": "ok",
                    "timestamp": int(r.timestamp) * 1000} for r in grid_interactions().itertuples()]
    write_jsonl(root / "meta.jsonl.gz", meta)
    write_jsonl(root / "reviews.jsonl.gz", reviews)
    return root


def parquet_files(root: Path, items: pa.Table | None = None, interactions: pa.Table | None = None) -> Path:
    """``items.parquet`` and ``interactions.parquet`` (seconds) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    if interactions is None:
        inter = grid_interactions()
        interactions = pa.table({"user_id": inter.user_id, "item_id": inter.item_id, "timestamp": inter.timestamp})
    if items is None:
        items = pa.table({"item_id": [f"i{k}" for k in range(8)], "title": [f"Thing number {k}" for k in range(8)]})
    pq.write_table(interactions, root / "interactions.parquet")
    pq.write_table(items, root / "items.parquet")
    return root


RELEASE_HEADER = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid\n"


def release_pack(root: Path, with_train: bool = True) -> Path:
    """A processed release pack: ``item.json`` (items 0..5), ``index.json`` and the CSV splits."""
    root.mkdir(parents=True, exist_ok=True)
    items = {str(k): {"title": f"Item {k}", "description": f"['desc {k}']", "brand": "B",
                      "categories": ""} for k in range(6)}
    (root / "item.json").write_text(json.dumps(items, indent=1))
    (root / "index.json").write_text(json.dumps({str(k): [f"<a_{k}>", "<b_0>", "<c_1>"] for k in range(6)}, indent=1))
    splits = {"train": ["u1,[],x,\"[0, 1]\",2,[],s", "u2,[],x,[3],4,[],s"],
              "valid": ["u1,[],x,\"[0, 1, 2]\",3,[],s"], "test": ["u2,[],x,\"[3, 4, 4]\",5,[],s"]}
    for split, rows in splits.items():
        if split == "train" and not with_train:
            continue
        (root / f"{split}.csv").write_text(RELEASE_HEADER + "\n".join(rows) + "\n")
    return root
