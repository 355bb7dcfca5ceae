"""Paired comparisons of models scored on the same rows: differences of HR@K and NDCG@K with
paired bootstrap confidence intervals.

The questions asked (difference = first model minus second; a pair is compared when both of its
models were scored):

* the paper's ablation, stage by stage: reasoning activation (thinking) vs alignment (direct),
  GRPO (thinking) vs reasoning activation (thinking), and GRPO vs alignment in direct mode;
* thinking vs direct mode of the model under test;
* the model under test (each mode) vs SASRec (MiniOneRec's), vs SASRec-CE, and in a scheduled
  retraining run vs the production model.

Paired bootstrap: per evaluated row, the difference of the two models' per-row metric; a resample
draws ``n`` rows with replacement (as multinomial counts per row, so one matrix product averages
every pair at once), and the same resampled rows serve every pair, metric and K. The interval is
the percentile interval of the resampled mean differences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.common.registry import PRODUCTION_MODEL
from components.evaluate.config import ALIGN_MODEL, REASON_MODEL
from components.evaluate.metrics import ALL_SPLITS, row_gains

#: Two-sided coverage of the intervals.
CONFIDENCE = 0.95
#: Most resample-by-row counts held at once (memory of one chunk: 8 bytes each).
_CHUNK_CELLS = 4_000_000

Scored = tuple[str, str]
"""(model, mode) of one scored model."""


@dataclass(frozen=True)
class Pair:
    """One question: ``first`` minus ``second``."""

    first: Scored
    second: Scored
    question: str


def pairs(main_model: str) -> list[Pair]:
    """Every comparison asked of a run whose model under test is ``main_model``, most telling
    first (the caller keeps those whose models were scored)."""
    thinking, direct = (main_model, "thinking"), (main_model, "direct")
    out = [
        Pair(thinking, ("sasrec", "direct"), "vs SASRec"),
        Pair(direct, ("sasrec", "direct"), "vs SASRec"),
        Pair(thinking, ("sasrec_ce", "direct"), "vs SASRec-CE"),
        Pair(direct, ("sasrec_ce", "direct"), "vs SASRec-CE"),
        Pair(thinking, direct, "thinking vs direct"),
        Pair((REASON_MODEL, "thinking"), (ALIGN_MODEL, "direct"), "reasoning activation vs alignment"),
        Pair(thinking, (REASON_MODEL, "thinking"), "GRPO vs reasoning activation"),
        Pair(direct, (ALIGN_MODEL, "direct"), "GRPO vs alignment (direct)"),
    ]
    out += [Pair((main_model, mode), (PRODUCTION_MODEL, mode), "vs production") for mode in ("thinking", "direct")]
    return out


def resampled_means(differences: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(D, n) per-row differences -> (D, samples) means over rows drawn with replacement, the
    same draws for every one of the D rows. The draws depend on ``seed``, ``n`` and ``samples``
    only."""
    n = differences.shape[1]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    uniform = np.full(n, 1.0 / n)
    parts = []
    for start in range(0, samples, chunk):
        counts = rng.multinomial(n, uniform, size=min(chunk, samples - start))  # (chunk, n): draws per row
        parts.append(differences @ counts.T / n)
    return np.concatenate(parts, axis=1)


def _splits(scored: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    for split, rows in scored.groupby("split", sort=False):
        yield str(split), rows
    if scored["split"].nunique() > 1:
        yield ALL_SPLITS, scored


def compare(scored: pd.DataFrame, main_model: str, ks: Sequence[int], samples: int, seed: int) -> list[dict[str, Any]]:
    """One record per (pair, split, metric, K): both models' values, their difference, its
    interval, and how it was computed.

    ``scored`` has one row per model, mode and evaluated row: model, mode, split, row, rank
    (0-based, None/NaN on a miss)."""
    present = set(zip(scored["model"], scored["mode"]))
    asked = [p for p in pairs(main_model) if p.first in present and p.second in present]
    records = []
    for split, rows in _splits(scored):
        ranks = rows.assign(rank=rows["rank"].astype(float)).set_index(["split", "row", "model", "mode"])["rank"]
        ranks = ranks.unstack(["model", "mode"])  # one row per evaluated row, one column per scored model
        gains = {(model, mode, k): row_gains(ranks[(model, mode)].to_numpy(dtype=float), k)
                 for model, mode in {s for p in asked for s in (p.first, p.second)} for k in ks}
        cells = [(pair, metric, k) for pair in asked for k in ks for metric in ("hr", "ndcg")]
        if not cells:
            continue
        differences = np.stack([gains[(*pair.first, k)][metric] - gains[(*pair.second, k)][metric]
                                for pair, metric, k in cells])
        means = resampled_means(differences, samples, seed)
        low, high = np.percentile(means, [50 * (1 - CONFIDENCE), 100 - 50 * (1 - CONFIDENCE)], axis=1)
        for i, (pair, metric, k) in enumerate(cells):
            first, second = gains[(*pair.first, k)][metric].mean(), gains[(*pair.second, k)][metric].mean()
            records.append({
                "question": pair.question, "model": pair.first[0], "mode": pair.first[1],
                "vs_model": pair.second[0], "vs_mode": pair.second[1], "split": split, "metric": metric,
                "k": int(k), "value": float(first), "vs_value": float(second),
                "difference": float(differences[i].mean()), "ci_low": float(low[i]), "ci_high": float(high[i]),
                "confidence": CONFIDENCE, "n": int(differences.shape[1]), "bootstrap_samples": int(samples),
                "seed": int(seed)})
    return records


def mlflow_metrics(comparisons: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Flat MLflow metrics: ``compare.<split>.<model>_<mode>-vs-<model>_<mode>.<metric>_at_<k>.<what>``."""
    out = {}
    for c in comparisons:
        key = (f"compare.{c['split']}.{c['model']}_{c['mode']}-vs-{c['vs_model']}_{c['vs_mode']}"
               f".{c['metric']}_at_{c['k']}")
        out.update({f"{key}.difference": c["difference"], f"{key}.ci_low": c["ci_low"],
                    f"{key}.ci_high": c["ci_high"]})
    return out
