"""HR@K and NDCG@K against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.evaluate.metrics import metric_rows, row_gains, target_rank


def test_single_row_metrics_by_hand():
    ranked = ["i7", "i3", "i9", "i1"]
    assert target_rank(ranked, "i9") == 2 and target_rank(ranked, "i5") is None
    # one row per case, at 0-based ranks 0, 2, 2, unranked, 6 (NaN: not ranked)
    ranks = np.array([0, 2, 2, np.nan, 6], dtype=float)
    by_k = [row_gains(ranks[i:i + 1], k) for i, k in enumerate([1, 3, 2, 10, 10])]
    assert [(float(g["hr"][0]), float(g["ndcg"][0])) for g in by_k] == \
        [(1.0, 1.0), (1.0, 0.5), (0.0, 0.0), (0.0, 0.0), (1.0, pytest.approx(1 / 3))]  # 1/log2(2+2), 1/log2(8)


def _scored(ranks, split="test", model="m", mode="direct"):
    return pd.DataFrame({"model": model, "mode": mode, "split": split, "rank": ranks,
                         "valid_beams": 10, "beams": 10, "latency_s": 0.5})


def test_aggregates_by_hand():
    # four rows: hit at rank 0, hit at rank 1, hit at rank 4, miss
    metrics = metric_rows(_scored([0, 1, 4, None]), [1, 3, 5])
    got = metrics.set_index("k")
    assert got.at[1, "hr"] == pytest.approx(1 / 4)
    assert got.at[1, "ndcg"] == pytest.approx(1 / 4)
    assert got.at[3, "hr"] == pytest.approx(2 / 4)
    assert got.at[3, "ndcg"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert got.at[5, "hr"] == pytest.approx(3 / 4)
    assert got.at[5, "ndcg"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert set(metrics["n"]) == {4} and set(metrics["valid_rate"]) == {1.0}
    assert set(metrics["latency_ms"]) == {500.0}


def test_per_split_and_overall_and_valid_rate():
    scored = pd.concat([_scored([0, None], split="valid"), _scored([None, None, 2], split="test")], ignore_index=True)
    scored.loc[scored.index[0], "valid_beams"] = 5  # half of one row's beams were not catalog SIDs
    metrics = metric_rows(scored, [3])
    by_split = metrics.set_index("split")
    assert by_split.at["valid", "hr"] == pytest.approx(0.5) and by_split.at["valid", "n"] == 2
    assert by_split.at["test", "hr"] == pytest.approx(1 / 3) and by_split.at["test", "n"] == 3
    assert by_split.at["all", "hr"] == pytest.approx(2 / 5) and by_split.at["all", "n"] == 5
    assert by_split.at["valid", "valid_rate"] == pytest.approx(15 / 20)
    assert by_split.at["test", "valid_rate"] == 1.0
