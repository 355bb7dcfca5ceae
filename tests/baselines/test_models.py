"""Baselines: popularity by hand, and SASRec beating popularity on the demo data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.baselines.config import SasrecConfig
from components.baselines.models import SasrecBaseline, popularity
from components.common.config import parse_section


def test_popularity_ranks_train_targets_only():
    train = pd.DataFrame({"target": ["b", "c", "b", "z", "z", "z"], "history": [["a"]] * 6})
    ranking = popularity(train, ["a", "b", "c", "d"], n_rows=2, top=3)  # z is not in the catalog
    assert ranking.items == [["b", "c", "a"], ["b", "c", "a"]]
    assert ranking.scores[0] == [2.0, 1.0, 0.0]


def _hr10(items, targets):
    return float(np.mean([t in row[:10] for row, t in zip(items, targets)]))


def test_sasrec_beats_popularity_on_demo_data(eval_inputs):
    samples = pq.read_table(eval_inputs.samples).to_pandas()
    samples["history"] = [list(h) for h in samples["history"]]
    train, valid, test = (samples[samples["split"] == s] for s in ("train", "valid", "test"))
    catalog = pq.read_table(eval_inputs.sid_map)["item_id"].to_pylist()
    cfg = parse_section(SasrecConfig, {"epochs": 15, "patience": 4}, "baselines.sasrec")
    model = SasrecBaseline(cfg, seed=0)
    info = model.fit(train, valid, catalog)
    sasrec = _hr10(model.rank(test["history"].tolist(), 10).items, test["target"])
    pop = _hr10(popularity(train, catalog, len(test), 10).items, test["target"])
    assert info["best_valid_ndcg_at_10"] > 0
    assert sasrec > pop + 0.05, (sasrec, pop)
    ranked = model.rank(test["history"].tolist()[:3], 10)
    assert all(len(set(r)) == 10 and set(r) <= set(catalog) for r in ranked.items)
    assert all(s == sorted(s, reverse=True) for s in ranked.scores)
