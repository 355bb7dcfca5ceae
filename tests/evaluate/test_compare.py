"""Paired comparisons: differences by hand, the paired bootstrap's draws and intervals, which
pairs are asked, and the plain-text table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluate import compare as compare_module
from components.evaluate.compare import compare, mlflow_metrics, pairs, resampled_means
from components.evaluate.report import format_comparisons_table


def _scored(ranks: dict[tuple[str, str], list], split: str = "test", first_row: int = 0) -> pd.DataFrame:
    frames = [pd.DataFrame({"model": model, "mode": mode, "split": split, "row": range(first_row, first_row + len(r)),
                            "rank": pd.array(r, dtype=object)}) for (model, mode), r in ranks.items()]
    return pd.concat(frames, ignore_index=True)


def test_differences_by_hand_and_only_pairs_whose_models_were_scored():
    scored = _scored({("m", "thinking"): [0, 4, None, 12], ("m", "direct"): [None, 1, None, 2],
                      ("sasrec", "direct"): [9, None, None, None]})
    found = compare(scored, "m", [5, 10], samples=200, seed=0)
    asked = {(c["model"], c["mode"], c["vs_model"], c["vs_mode"]) for c in found}
    assert asked == {("m", "thinking", "sasrec", "direct"), ("m", "direct", "sasrec", "direct"),
                     ("m", "thinking", "m", "direct")}
    by_key = {(c["model"], c["mode"], c["vs_model"], c["metric"], c["k"]): c for c in found}
    hr = by_key[("m", "thinking", "sasrec", "hr", 10)]  # hits at 0 and 4 vs a hit at 9
    assert (hr["value"], hr["vs_value"], hr["difference"]) == (0.5, 0.25, 0.25)
    assert hr["n"] == 4 and hr["bootstrap_samples"] == 200 and hr["seed"] == 0 and hr["confidence"] == 0.95
    assert hr["ci_low"] <= hr["difference"] <= hr["ci_high"]
    ndcg = by_key[("m", "thinking", "m", "ndcg", 5)]  # thinking: 1 + 1/log2(6); direct: 1/log2(3) + 1/log2(4)
    expected = (1 + 1 / np.log2(6) - 1 / np.log2(3) - 0.5) / 4
    assert ndcg["difference"] == pytest.approx(expected)
    assert by_key[("m", "thinking", "sasrec", "hr", 5)]["vs_value"] == 0.0  # rank 9 is not in the top 5


def test_rows_are_paired_by_row_not_by_position():
    scored = _scored({("m", "direct"): [0, None, 3, None], ("sasrec", "direct"): [None, 0, None, 1]})
    shuffled = pd.concat([scored[scored["model"] == "m"], scored[scored["model"] == "sasrec"].iloc[::-1]])
    assert compare(shuffled, "m", [10], 300, 1) == compare(scored, "m", [10], 300, 1)


def test_a_model_against_itself_differs_by_exactly_zero():
    ranks = [0, None, 2, 5, None, 1]
    found = compare(_scored({("m", "thinking"): ranks, ("m", "direct"): ranks}), "m", [10], 300, 0)
    assert {(c["difference"], c["ci_low"], c["ci_high"]) for c in found} == {(0.0, 0.0, 0.0)}


def test_every_split_and_all():
    scored = pd.concat([_scored({("m", "direct"): [0, None], ("sasrec", "direct"): [None, None]}, "valid"),
                        _scored({("m", "direct"): [None, None, 1], ("sasrec", "direct"): [0, None, 1]}, "test",
                                first_row=2)])
    found = {(c["split"], c["metric"]): c for c in compare(scored, "m", [10], 200, 0)}
    assert found[("valid", "hr")]["n"] == 2 and found[("test", "hr")]["n"] == 3 and found[("all", "hr")]["n"] == 5
    assert found[("all", "hr")]["difference"] == pytest.approx((2 - 2) / 5)
    assert found[("valid", "hr")]["difference"] == 0.5


def test_the_same_draws_serve_every_pair_and_chunks_change_nothing(monkeypatch):
    rng = np.random.default_rng(0)
    d = rng.normal(size=(1, 50))
    means = resampled_means(np.vstack([d, 2 * d]), samples=300, seed=4)
    assert means.shape == (2, 300) and np.allclose(means[1], 2 * means[0])  # the same resampled rows
    assert np.allclose(resampled_means(d, 300, 4), means[:1])
    assert not np.allclose(resampled_means(d, 300, 5), means[:1])
    monkeypatch.setattr(compare_module, "_CHUNK_CELLS", 50 * 7)  # 7 resamples per chunk
    assert np.allclose(resampled_means(d, 300, 4), means[:1])


def test_bootstrap_spread_and_interval_coverage():
    """The resampled means spread like the standard error of a mean, and the 95% intervals cover
    the true difference of paired hit rates about 95% of the time."""
    rng = np.random.default_rng(1)
    d = rng.normal(size=(1, 400))
    spread = resampled_means(d, 4000, 0).std()
    assert spread == pytest.approx(d.std() / np.sqrt(400), rel=0.08)

    trials, n, covered = 300, 150, 0
    for trial in range(trials):
        first = rng.random(n) < 0.35
        second = np.where(rng.random(n) < 0.7, first, rng.random(n) < 0.25)  # correlated, as models on one row
        true_difference = 0.35 - (0.7 * 0.35 + 0.3 * 0.25)
        means = resampled_means((first.astype(float) - second)[None], 400, trial)
        low, high = np.percentile(means, [2.5, 97.5])
        covered += low <= true_difference <= high
    assert 0.9 <= covered / trials <= 0.99, covered / trials


def test_pairs_cover_the_ablation_the_bars_and_the_modes():
    asked = {(p.first, p.second) for p in pairs("sr")}
    assert (("reason_sft", "thinking"), ("align_sft", "direct")) in asked
    assert (("sr", "thinking"), ("reason_sft", "thinking")) in asked
    assert (("sr", "thinking"), ("sr", "direct")) in asked
    for mode in ("thinking", "direct"):
        assert {(("sr", mode), ("sasrec", "direct")), (("sr", mode), ("sasrec_ce", "direct"))} <= asked


def test_comparison_table_and_mlflow_keys():
    scored = _scored({("sidreasoner", "thinking"): [0, 1, None, None, 3], ("sidreasoner", "direct"): [0, 1, 2, 3, 4],
                      ("sasrec", "direct"): [None] * 5})
    found = compare(scored, "sidreasoner", [10], 500, 3)
    lines = format_comparisons_table(found).splitlines()
    assert lines[0].split()[:4] == ["comparison", "(first", "-", "second)"]
    body = {line.split("  ")[0].strip(): line for line in lines[2:-1]}
    assert set(body) == {"sidreasoner thinking vs sasrec", "sidreasoner direct vs sasrec",
                         "sidreasoner thinking vs sidreasoner direct"}
    assert "+1.0000 [+1.0000, +1.0000] *" in body["sidreasoner direct vs sasrec"]  # every row a hit vs none
    assert lines[-1].startswith("difference = first minus second") and "500 resamples, seed 3" in lines[-1]
    assert format_comparisons_table([]) == ""
    keys = mlflow_metrics(found)
    assert keys["compare.test.sidreasoner_direct-vs-sasrec_direct.hr_at_10.difference"] == 1.0
    assert "compare.test.sidreasoner_thinking-vs-sidreasoner_direct.ndcg_at_10.ci_low" in keys
