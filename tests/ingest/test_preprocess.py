"""The recipe's preprocessing steps on hand-made inputs."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from components.ingest.config import PreprocessConfig
from components.ingest.preprocess import chronological_split, kcore, sliding_samples, title_problem, window_kcore
from tests.ingest.helpers import grid_interactions


def test_title_rules():
    assert title_problem("", 20) == "empty"
    assert title_problem("x", 20) == "too_short"
    assert title_problem('<span id="a">Pen</span>', 20) == "span_markup"
    assert title_problem(" ".join(["w"] * 21), 20) == "too_long"
    assert title_problem(" ".join(["w"] * 20), 20) is None


def test_kcore_is_iterative():
    # u3 has 2 interactions -> dropped; then item c falls to 1 -> dropped; then u2 falls to 1 -> dropped.
    rows = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "c"), ("u3", "b"),
            ("u4", "a"), ("u4", "b"), ("u5", "a"), ("u5", "b")]
    df = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(timestamp=0)
    df = df[~((df.user_id == "u3") & (df.item_id == "b"))]  # u3 keeps only c
    out = kcore(df, 2)
    assert set(out.user_id) == {"u1", "u4", "u5"}
    assert set(out.item_id) == {"a", "b"}
    assert (out.groupby("user_id").size() >= 2).all() and (out.groupby("item_id").size() >= 2).all()


def test_sliding_windows_keep_order_repeats_and_cap():
    df = pd.DataFrame({"user_id": ["u"] * 13, "item_id": [f"i{k % 12}" for k in range(13)],
                       "timestamp": list(range(13))}).sample(frac=1, random_state=0)
    samples = sliding_samples(df, max_history=10)
    assert len(samples) == 12
    assert samples.iloc[0]["history"] == ["i0"] and samples.iloc[0]["target"] == "i1"
    last = samples.iloc[-1]
    assert last["history"] == [f"i{k}" for k in range(2, 12)] and last["target"] == "i0"  # repeat kept


def test_global_chronological_split():
    samples = pd.DataFrame({"user_id": ["u"] * 100, "history": [["x"]] * 100, "target": ["y"] * 100,
                            "timestamp": list(range(100))[::-1]})
    out = chronological_split(samples, [0.8, 0.1, 0.1])
    assert out.split.value_counts().to_dict() == {"train": 80, "valid": 10, "test": 10}
    assert out[out.split == "train"].timestamp.max() < out[out.split == "valid"].timestamp.min()
    assert out[out.split == "valid"].timestamp.max() < out[out.split == "test"].timestamp.min()


def test_window_moves_back_a_year_until_enough_items():
    inter = grid_interactions(n_users=30, n_items=10, per_user=6, t0=int(dt.datetime(2014, 1, 1).timestamp()))
    cfg = PreprocessConfig(window_start=dt.date(2016, 10, 1), window_end=None, min_window_items=5, k_core=2)
    out, info = window_kcore(inter, cfg)
    assert info["extended_years"] >= 2
    assert out.item_id.nunique() >= 5
    assert info["start"] <= "2014-10-01"
