"""Ranking metrics per item: HR@K and NDCG@K with one relevant item, and the valid-SID rate.

A ranked list holds item ids (decoded SIDs mapped back through the SID map). With one relevant
item at 0-based rank ``r``: HR@K = 1 if r < K, NDCG@K = 1 / log2(r + 2) if r < K, else 0
(RECIPE.md section 6). A target outside the list (or outside the catalog) is a miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

METRIC_COLUMNS = ["model", "mode", "split", "k", "hr", "ndcg", "valid_rate", "n", "latency_ms"]
ALL_SPLITS = "all"


def target_rank(ranked: Sequence[str], target: str) -> int | None:
    """0-based position of ``target`` in ``ranked``, None when absent."""
    for position, item in enumerate(ranked):
        if item == target:
            return position
    return None


def row_gains(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-row HR@K and NDCG@K (``hr``, ``ndcg``) from 0-based ranks (NaN: the target was not
    ranked)."""
    hit = np.where(np.isnan(ranks), False, ranks < k)
    ndcg = np.where(hit, 1.0 / np.log2(np.nan_to_num(ranks, nan=0.0) + 2.0), 0.0)
    return {"hr": hit.astype(float), "ndcg": ndcg}


def metric_rows(scored: pd.DataFrame, ks: Sequence[int]) -> pd.DataFrame:
    """Metrics per (model, mode, split), plus split ``all`` when several splits are present.

    ``scored`` has one row per evaluated example and model/mode with columns model, mode, split,
    rank (0-based or None/NaN), valid_beams, beams and latency_s.
    """
    groups = [scored]
    if scored["split"].nunique() > 1:
        groups.append(scored.assign(split=ALL_SPLITS))
    frame = pd.concat(groups, ignore_index=True)
    out = []
    for (model, mode, split), group in frame.groupby(["model", "mode", "split"], sort=False):
        ranks = group["rank"].to_numpy(dtype=float)  # NaN for misses
        beams = int(group["beams"].sum())
        valid_rate = float(group["valid_beams"].sum()) / beams if beams else 0.0
        latency_ms = float(group["latency_s"].mean()) * 1000.0
        for k in ks:
            gains = row_gains(ranks, k)
            out.append({"model": model, "mode": mode, "split": split, "k": int(k), "hr": float(gains["hr"].mean()),
                        "ndcg": float(gains["ndcg"].mean()), "valid_rate": valid_rate, "n": int(len(group)),
                        "latency_ms": latency_ms})
    return pd.DataFrame(out, columns=METRIC_COLUMNS)
