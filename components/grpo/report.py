"""Per-step GRPO table, its summary and chart: makes "reasoning gets shorter as reward rises"
(the paper's observation) visible, or shows that it did not happen.

The table is built from the Trainer's log history (one record per logged step, restored across
resumes from the checkpoint's trainer state); the periodic validation's records fill its
``validation_*`` columns at the steps it ran (HR/NDCG at the configured k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.common.training.settings import ValidationConfig

#: Table column -> key in TRL's log record (a column of the other reward mode stays empty).
COLUMNS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "prefix_reward": "rewards/prefix_reward/mean",
    "rank_reward": "rewards/rank_reward/mean",
    "hit_rate": "rollout/hit_rate",
    "beam_hit_rate": "rollout/beam_hit_rate",
    "reasoning_closed_rate": "rollout/reasoning_closed_rate",
    "valid_sid_rate": "rollout/valid_sid_rate",
    "well_formed_rate": "rollout/well_formed_rate",
    "reasoning_tokens": "rollout/reasoning_tokens",
    "reasoning_chars": "rollout/reasoning_chars",
    "completion_length": "completions/mean_length",
    "kl": "kl",
    "entropy": "entropy",
    "loss": "loss",
}


#: Table column -> the periodic validation's metric (``eval_<name>``; ``{k}``: validation.k).
VALIDATION_COLUMNS = {
    "validation_hr": "hr_at_{k}",
    "validation_ndcg": "ndcg_at_{k}",
    "validation_reasoning_closed_rate": "reasoning_closed_rate",
    "validation_reasoning_tokens": "reasoning_tokens",
}


def step_table(log_history: Sequence[Mapping[str, Any]], validation: ValidationConfig) -> list[dict[str, Any]]:
    """One row per logged training step (the last record of a step wins after a resume), with the
    validation's metrics at the steps it ran."""
    rows: dict[int, dict[str, Any]] = {}

    def row(step: int) -> dict[str, Any]:
        return rows.setdefault(step, {"step": step, **dict.fromkeys([*COLUMNS, *VALIDATION_COLUMNS])})

    for record in log_history:
        if "reward" in record:
            row(int(record["step"])).update({col: record.get(key) for col, key in COLUMNS.items()})
        elif validation.best_metric_key in record:
            row(int(record["step"])).update({col: record.get("eval_" + key.format(k=validation.k))
                                             for col, key in VALIDATION_COLUMNS.items()})
    return [rows[s] for s in sorted(rows)]


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (None for fewer than 3 points or a constant series)."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else None


def summarize(table: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """First vs last quarter of the training steps (a validation-only row, such as the starting
    model's at step 0, is no training step), and the reward / reasoning-length rank correlation."""
    table = [r for r in table if r.get("reward") is not None]
    if not table:
        return {}
    window = max(1, len(table) // 4)

    def mean(rows: Sequence[Mapping[str, Any]], col: str) -> float | None:
        values = [r[col] for r in rows if r.get(col) is not None]
        return sum(values) / len(values) if values else None

    summary: dict[str, Any] = {"logged_steps": len(table)}
    for col in ("reward", "hit_rate", "beam_hit_rate", "reasoning_closed_rate", "valid_sid_rate", "reasoning_tokens",
                "reasoning_chars", "kl"):
        summary[f"{col}_first"] = mean(table[:window], col)
        summary[f"{col}_last"] = mean(table[-window:], col)
    paired = [(r["reward"], r["reasoning_tokens"]) for r in table
              if r.get("reward") is not None and r.get("reasoning_tokens") is not None]
    summary["reward_vs_reasoning_tokens_spearman"] = spearman([p[0] for p in paired], [p[1] for p in paired])
    return summary


def plot(table: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Reward, hit rate, the validation's NDCG and reasoning length per step on one chart (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in table]
    fig, left = plt.subplots(figsize=(8, 4.5))
    for col, style in (("reward", "-"), ("hit_rate", "--"), ("valid_sid_rate", ":")):
        left.plot(steps, [r.get(col) if r.get(col) is not None else math.nan for r in table], style, label=col)
    validated = [r for r in table if r.get("validation_ndcg") is not None]
    if validated:
        left.plot([r["step"] for r in validated], [r["validation_ndcg"] for r in validated], "o",
                  label="validation NDCG")
    left.set_xlabel("step")
    left.set_ylabel("reward / rate")
    right = left.twinx()
    right.plot(steps, [r.get("reasoning_tokens") if r.get("reasoning_tokens") is not None else math.nan
                       for r in table], "-", color="tab:red", label="reasoning tokens")
    right.set_ylabel("reasoning length (tokens)", color="tab:red")
    lines = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize="small")
    left.set_title("GRPO: reward and reasoning length per step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
