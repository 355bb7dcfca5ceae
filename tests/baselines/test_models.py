"""Baselines: popularity by hand, SASRec and SASRec-CE beating popularity on the demo data, the
cross-entropy loss by hand, and SASRec-CE's tuning on valid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from components.baselines.config import SasrecCeConfig, SasrecConfig
from components.baselines.models import SASRec, SasrecBaseline, popularity, tune_sasrec
from components.common.config import ConfigError, parse_section


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


def _splits(inputs) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    samples = pq.read_table(inputs.samples).to_pandas()
    samples["history"] = [list(h) for h in samples["history"]]
    train, valid, test = (samples[samples["split"] == s] for s in ("train", "valid", "test"))
    return train, valid, test, pq.read_table(inputs.sid_map)["item_id"].to_pylist()


def test_cross_entropy_is_over_every_item_at_every_real_position():
    """The loss by hand: softmax over all items (not the padding column) at each non-padding
    position, averaged over those positions."""
    baseline = SasrecBaseline(parse_section(SasrecConfig, {"hidden_size": 4, "num_heads": 1}, "s"), seed=0, loss="ce")
    baseline.vocab = ["a", "b", "c"]
    torch.manual_seed(0)
    baseline.model = SASRec(3, baseline.cfg)
    states = torch.randn(2, 3, 4)
    pos = torch.tensor([[0, 2, 3], [1, 1, 2]])  # one padding position
    real = pos > 0
    got = baseline._ce_loss(states, pos, real, np.random.default_rng(0))
    weights = baseline.model.items.weight.detach()
    expected = []
    for b, t in zip(*torch.nonzero(real, as_tuple=True)):
        logits = weights[1:] @ states[b, t]
        expected.append(torch.logsumexp(logits, 0) - logits[pos[b, t] - 1])
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_sasrec_ce_tunes_on_valid_and_beats_popularity(eval_inputs):
    train, valid, test, catalog = _splits(eval_inputs)
    cfg = parse_section(SasrecCeConfig, {"epochs": 6, "patience": 2, "learning_rate": 3e-3,
                                         "grid": {"hidden_size": [16, 32], "dropout": [0.2]}}, "baselines.sasrec_ce")
    model, info = tune_sasrec(cfg, train, valid, catalog, seed=0)
    grid = info["grid"]
    assert [(g["hidden_size"], g["dropout"], g["learning_rate"]) for g in grid] == [(16, 0.2, 3e-3), (32, 0.2, 3e-3)]
    best = max(grid, key=lambda g: g["valid_ndcg_at_10"])
    assert info["chosen"] == {k: best[k] for k in ("hidden_size", "dropout", "learning_rate")}
    assert info["best_valid_ndcg_at_10"] == best["valid_ndcg_at_10"] and info["selected_by"] == "valid NDCG@10"
    assert model.cfg.hidden_size == best["hidden_size"] and model.loss == "ce"
    ce = _hr10(model.rank(test["history"].tolist(), 10).items, test["target"])
    pop = _hr10(popularity(train, catalog, len(test), 10).items, test["target"])
    assert ce > pop + 0.05, (ce, pop)


def test_sasrec_ce_without_valid_rows_trains_the_first_setting_only(eval_inputs):
    train, valid, _, catalog = _splits(eval_inputs)
    cfg = parse_section(SasrecCeConfig, {"epochs": 1, "grid": {"hidden_size": [16, 32]}}, "baselines.sasrec_ce")
    model, info = tune_sasrec(cfg, train, valid.head(0), catalog, seed=0)
    assert len(info["grid"]) == 1 and info["chosen"]["hidden_size"] == 16 and model.cfg.hidden_size == 16
    assert info["selected_by"].startswith("no valid rows")


def test_sasrec_ce_grid_settings_and_errors():
    cfg = parse_section(SasrecCeConfig, {"dropout": 0.1, "grid": {"hidden_size": [32, 64],
                                                                  "learning_rate": [1e-3, 3e-3]}}, "s")
    settings = [(c.hidden_size, c.dropout, c.learning_rate) for c in cfg.settings()]
    assert settings == [(32, 0.1, 1e-3), (32, 0.1, 3e-3), (64, 0.1, 1e-3), (64, 0.1, 3e-3)]
    assert len(parse_section(SasrecCeConfig, {}, "s").settings()) == 4  # 2 hidden sizes x 2 dropouts
    with pytest.raises(ConfigError, match="num_heads 3 must divide every grid.hidden_size"):
        parse_section(SasrecCeConfig, {"num_heads": 3, "hidden_size": 63, "grid": {"hidden_size": [63, 64]}}, "s")
    with pytest.raises(ConfigError, match="must not repeat values"):
        parse_section(SasrecCeConfig, {"grid": {"dropout": [0.2, 0.2]}}, "s")
    with pytest.raises(ConfigError, match="grid.dropout"):
        parse_section(SasrecCeConfig, {"grid": {"dropout": []}}, "s")
