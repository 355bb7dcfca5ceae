"""What people read: the metric table and the paired comparisons (plain text for the demo's final
printout, HTML for the report) and a self-contained HTML report (inline CSS, charts as base64
PNG, no external resource) with, under ``evaluate.ablation``, GRPO's reward and reasoning length
per step, and sample users: history titles, reasoning, and recommended titles with hits marked.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from components.common.registry import PRODUCTION_MODEL
from components.evaluate.config import ALIGN_MODEL, REASON_MODEL
from components.evaluate.metrics import ALL_SPLITS

#: The bar every model is read against (a column of the table: HR@10 minus its).
BAR = "sasrec"
#: The baselines' rankings have no decoding mode: the table shows none.
BASELINES = ("sasrec", "sasrec_ce", "popularity")
#: Models after the one under test, in this order: what it must beat, then the earlier stages.
MODEL_ORDER = (PRODUCTION_MODEL, *BASELINES, REASON_MODEL, ALIGN_MODEL)


def _ordered(metrics: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(model, mode, split) keys: per split, the model under test first (thinking, then direct),
    then production, the baselines and the earlier stages' models."""
    keys = metrics[["model", "mode", "split"]].drop_duplicates().itertuples(index=False, name=None)

    def order(key: tuple[str, str, str]) -> tuple:
        model, mode, split = key
        rank = MODEL_ORDER.index(model) + 1 if model in MODEL_ORDER else 0
        return (split == ALL_SPLITS, split, rank, model, mode != "thinking", mode)

    return sorted(keys, key=order)


def label(model: str, mode: str) -> str:
    """How a scored model is named to readers: a baseline by its name, a decoded model with its mode."""
    return model if model in BASELINES else f"{model} {mode}"


def table_rows(metrics: pd.DataFrame, ks: Sequence[int] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows: one row per (model, mode, split), HR@K and NDCG@K per K, and
    when SASRec was scored, each row's HR@10 (or the largest K below) minus SASRec's."""
    if hasattr(metrics, "to_pandas"):  # a pyarrow table
        metrics = metrics.to_pandas()
    ks = sorted(ks or metrics["k"].unique())
    bar_k = max([k for k in ks if k <= 10] or ks)
    bar = metrics[(metrics["model"] == BAR) & (metrics["k"] == bar_k)].set_index("split")["hr"].to_dict()
    header = ["model", "mode", "split", "n"] + [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")] + [
        "valid SID", "ms/example"] + ([f"HR@{bar_k} vs {BAR}"] if bar else [])
    rows = []
    for model, mode, split in _ordered(metrics):
        group = metrics[(metrics["model"] == model) & (metrics["mode"] == mode) & (metrics["split"] == split)]
        by_k = group.set_index("k")
        cells = [model, "-" if model in BASELINES else mode, split, str(int(group["n"].iloc[0]))]
        for k in ks:
            cells += [f"{by_k.at[k, 'hr']:.4f}", f"{by_k.at[k, 'ndcg']:.4f}"] if k in by_k.index else ["-", "-"]
        cells += [f"{group['valid_rate'].iloc[0]:.1%}", f"{group['latency_ms'].iloc[0]:.1f}"]
        if bar:
            versus = split in bar and model != BAR and bar_k in by_k.index
            cells.append(f"{by_k.at[bar_k, 'hr'] - bar[split]:+.4f}" if versus else "-")
        rows.append(cells)
    return header, rows


def _interval(c: dict[str, Any]) -> str:
    return f"{c['difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"


def _excludes_zero(c: dict[str, Any]) -> bool:
    return c["ci_low"] > 0 or c["ci_high"] < 0


def comparison_rows(comparisons: Sequence[dict[str, Any]],
                    split: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired comparisons on one split (default: test when compared, else
    the first): one row per pair, the difference and its interval for each metric and K, marked
    `` *`` when the interval excludes 0."""
    if not comparisons:
        return [], []
    splits = list(dict.fromkeys(c["split"] for c in comparisons))
    split = split or ("test" if "test" in splits else splits[0])
    chosen = [c for c in comparisons if c["split"] == split]
    cells = sorted({(c["k"], c["metric"]) for c in chosen}, key=lambda km: (km[0], km[1] != "hr"))
    header = ["comparison (first - second)", "question", "split", "n"] + [
        f"{'HR' if metric == 'hr' else 'NDCG'}@{k} difference [95% CI]" for k, metric in cells]
    rows = []
    by_pair: dict[tuple, dict] = {}
    for c in chosen:
        by_pair.setdefault((c["model"], c["mode"], c["vs_model"], c["vs_mode"]), {})[(c["k"], c["metric"])] = c
    for (model, mode, vs_model, vs_mode), found in by_pair.items():
        first = next(iter(found.values()))
        row = [f"{label(model, mode)} vs {label(vs_model, vs_mode)}", first["question"], split, str(first["n"])]
        row += [_interval(found[cell]) + (" *" if _excludes_zero(found[cell]) else "") if cell in found else "-"
                for cell in cells]
        rows.append(row)
    return header, rows


def _aligned(header: list[str], rows: list[list[str]], left: int) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_comparisons_table(comparisons: Sequence[dict[str, Any]], split: str | None = None) -> str:
    """The paired comparisons as aligned plain text (``sidreasoner run`` prints them after the
    metrics), with a line saying how the intervals were made; empty when nothing was compared."""
    header, rows = comparison_rows(comparisons, split)
    if not rows:
        return ""
    c = comparisons[0]
    note = (f"difference = first minus second on the same rows; [{c['confidence']:.0%} paired bootstrap interval, "
            f"{c['bootstrap_samples']} resamples, seed {c['seed']}]; * the interval excludes 0")
    return _aligned(header, rows, left=3) + "\n" + note


def format_metrics_table(metrics: Any, ks: Sequence[int] | None = None) -> str:
    """The metric table as aligned plain text (``sidreasoner run`` prints it at the end).

    ``metrics`` is the stage's ``metrics`` artifact (a DataFrame or pyarrow Table); ``ks``
    restricts the columns (default: every K present).
    """
    header, rows = table_rows(metrics, ks)
    return _aligned(header, rows, left=3)


def bar_chart_png(metrics: pd.DataFrame, ks: Sequence[int]) -> bytes:
    """Grouped bars of HR@K and NDCG@K per (model, mode) on the first split (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = sorted(metrics["split"].unique(), key=lambda s: (s == ALL_SPLITS, s != "test", s))[0]
    keys = [(m, mode) for m, mode, s in _ordered(metrics) if s == split]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    width = 0.8 / max(len(keys), 1)
    for ax, metric in zip(axes, ("hr", "ndcg")):
        for i, (model, mode) in enumerate(keys):
            group = metrics[(metrics["model"] == model) & (metrics["mode"] == mode) & (metrics["split"] == split)]
            values = [float(group[group["k"] == k][metric].iloc[0]) if (group["k"] == k).any() else 0.0 for k in ks]
            ax.bar([x + i * width for x in range(len(ks))], values, width, label=f"{model} ({mode})")
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(ks))], [f"@{k}" for k in ks])
        ax.set_title(f"{metric.upper()}@K, {split} split")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def grpo_chart_png(steps: Sequence[dict[str, Any]]) -> bytes:
    """GRPO's mean reward (left axis) and mean reasoning length in tokens (right axis) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(column: str) -> list[float]:
        return [float(r[column]) if r.get(column) is not None else float("nan") for r in steps]

    x = [r["step"] for r in steps]
    fig, reward = plt.subplots(figsize=(8, 3.6))
    reward.plot(x, series("reward"), "o-", color="tab:blue", label="reward")
    reward.set_xlabel("GRPO step")
    reward.set_ylabel("mean reward", color="tab:blue")
    length = reward.twinx()
    length.plot(x, series("reasoning_tokens"), "s--", color="tab:red", label="reasoning tokens")
    length.set_ylabel("mean reasoning length (tokens)", color="tab:red")
    reward.set_title("GRPO: reward and reasoning length per step")
    reward.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d2327;max-width:1200px}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d4d8;padding:.25rem .5rem;text-align:right}th{background:#f2f4f6}
td.l,th.l{text-align:left}tr.main td{font-weight:600}
.user{border:1px solid #d0d4d8;border-radius:6px;padding:.75rem 1rem;margin:1rem 0}
.reasoning{white-space:pre-wrap;background:#f7f7f9;padding:.5rem;font-size:.85rem;border-radius:4px}
ol.recs li.hit{background:#d9f2dc;font-weight:600}.tag{font-size:.75rem;color:#555}
.sid{font-family:ui-monospace,monospace;font-size:.75rem;color:#666}
td.up{background:#d9f2dc}td.down{background:#f8d7da}
"""


def _metric_table_html(metrics: pd.DataFrame, ks: Sequence[int], main_model: str) -> str:
    header, rows = table_rows(metrics, ks)
    head = "".join(f'<th class="l">{html.escape(h)}</th>' if i < 3 else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for cells in rows:
        cls = ' class="main"' if cells[0] == main_model else ""
        tds = "".join(f'<td class="l">{html.escape(c)}</td>' if i < 3 else f"<td>{html.escape(c)}</td>"
                      for i, c in enumerate(cells))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _comparisons_html(comparisons: Sequence[dict[str, Any]]) -> str:
    """Every split's paired comparisons; a difference whose interval excludes 0 is shaded (green:
    the first model is better, red: worse)."""
    splits = list(dict.fromkeys(c["split"] for c in comparisons))
    tables = []
    for split in splits:
        header, rows = comparison_rows(comparisons, split)
        head = "".join(f'<th class="l">{html.escape(h)}</th>' if i < 3 else f"<th>{html.escape(h)}</th>"
                       for i, h in enumerate(header))
        body = []
        for cells in rows:
            tds = []
            for i, cell in enumerate(cells):
                cls = "l" if i < 3 else ""
                if i >= 4 and cell.endswith(" *"):
                    cls = "up" if cell.startswith("+") else "down"
                tds.append(f'<td class="{cls}">{html.escape(cell.removesuffix(" *"))}</td>')
            body.append(f"<tr>{''.join(tds)}</tr>")
        tables.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    c = comparisons[0]
    return "".join(tables) + (
        f'<p class="tag">Difference = first model minus second, on the same rows. Interval: {c["confidence"]:.0%} '
        f'paired bootstrap percentile interval ({c["bootstrap_samples"]} resamples of the rows with replacement, '
        f'the same rows for both models; seed {c["seed"]}). Shaded: the interval excludes 0. HR/NDCG values of '
        "each model are in the metrics table.</p>")


def _grpo_html(steps: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """GRPO's reward and reasoning length per step: chart, the trend in one sentence, the table."""
    chart = base64.b64encode(grpo_chart_png(steps)).decode()
    columns = [c for c in ("reward", "hit_rate", "reasoning_tokens", "reasoning_closed_rate", "valid_sid_rate", "kl")
               if any(r.get(c) is not None for r in steps)]

    def shown(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    trend = []
    for column, what in (("reward", "mean reward"), ("reasoning_tokens", "mean reasoning length (tokens)")):
        first, last = summary.get(f"{column}_first"), summary.get(f"{column}_last")
        if first is not None and last is not None:
            trend.append(f"{what} {first:.3g} in the first quarter of the steps, {last:.3g} in the last")
    rho = summary.get("reward_vs_reasoning_tokens_spearman")
    if rho is not None:
        trend.append(f"Spearman correlation of reward and reasoning length over the steps {rho:+.2f}")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["step", *columns])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(shown(r.get(c)))}</td>" for c in ["step", *columns]) + "</tr>"
                   for r in steps)
    return (f'<p>{html.escape("; ".join(trend) or "no summary recorded")}. The paper observes reasoning getting '
            "shorter as reward rises.</p>"
            f'<img alt="GRPO reward and reasoning length per step" src="data:image/png;base64,{chart}">'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _user_html(example: pd.DataFrame, titles: dict[str, str], history_sids: dict[str, str], top: int) -> str:
    first = example.iloc[0]
    parts = [f'<div class="user"><h3>User {html.escape(str(first["user_id"]))} '
             f'<span class="tag">({html.escape(str(first["split"]))} row)</span></h3>',
             "<p><b>History</b> (oldest first):</p><ol>"]
    for item in first["history"]:
        parts.append(f'<li>{html.escape(titles.get(item, item))} '
                     f'<span class="sid">{html.escape(history_sids.get(item, ""))}</span></li>')
    parts.append(f'</ol><p><b>Target:</b> {html.escape(titles.get(first["target"], first["target"]))}</p>')
    for _, pred in example.iterrows():
        hit = "" if pd.isna(pred["rank"]) else f" &mdash; hit at rank {int(pred['rank']) + 1}"
        parts.append(f'<p><b>{html.escape(pred["model"])}</b> <span class="tag">({html.escape(pred["mode"])})'
                     f"</span>{hit}</p>")
        if isinstance(pred["reasoning"], str):
            closed = "" if pred["reasoning_closed"] else " (cut: the model did not close its think block)"
            parts.append(f'<div class="reasoning">{html.escape(pred["reasoning"]) or "(empty)"}{closed}</div>')
        parts.append('<ol class="recs">')
        for position, (item, sid) in enumerate(zip(pred["ranked_items"][:top], pred["ranked_sids"][:top])):
            mark = ' class="hit"' if position == pred["rank"] else ""
            check = " &#10003;" if mark else ""
            parts.append(f'<li{mark}>{html.escape(titles.get(item, item))}{check} '
                         f'<span class="sid">{html.escape(sid)}</span></li>')
        parts.append("</ol>")
    parts.append("</div>")
    return "".join(parts)


def pick_examples(predictions: pd.DataFrame, main_model: str, count: int) -> list[Any]:
    """Row keys of ``count`` sample users: the main model's hits first, then misses, in file order."""
    main = predictions[predictions["model"] == main_model].drop_duplicates("row")
    hits = main[main["rank"].notna()]["row"].tolist()
    misses = main[main["rank"].isna()]["row"].tolist()
    take_hits = min(len(hits), (count + 1) // 2)
    chosen = hits[:take_hits] + misses[: count - take_hits]
    return (chosen + hits[take_hits:])[:count]


def render_report(metrics: pd.DataFrame, predictions: pd.DataFrame, stats: dict[str, Any],
                  titles: dict[str, str], history_sids: dict[str, str], *, main_model: str,
                  users: int = 6, top: int = 10, grpo_steps: Sequence[dict[str, Any]] = ()) -> str:
    """The self-contained HTML report (``stats``: the stage's stats, with its ``comparisons``;
    ``grpo_steps``: GRPO's per-step table, shown when given)."""
    ks = sorted(metrics["k"].unique())
    chart = base64.b64encode(bar_chart_png(metrics, ks)).decode()
    facts = [("catalog items", stats.get("catalog_items")), ("SID levels", stats.get("sid_levels")),
             ("beam width", stats.get("beam_width")), ("engine", stats.get("engine")),
             ("rows per split", stats.get("rows_per_split")), ("model", stats.get("model_uri"))]
    def shown(value: Any) -> str:
        return ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)

    fact_html = "".join(f"<tr><th class='l'>{html.escape(k)}</th><td class='l'>{html.escape(shown(v))}</td></tr>"
                        for k, v in facts if v is not None)
    examples = [_user_html(predictions[predictions["row"] == row], titles, history_sids, top)
                for row in pick_examples(predictions, main_model, users)]
    sections = []
    if stats.get("comparisons"):
        sections.append(f"<h2>Paired differences</h2>{_comparisons_html(stats['comparisons'])}")
    if grpo_steps:
        summary = (stats.get("grpo") or {}).get("summary") or {}
        sections.append(f"<h2>GRPO: reward and reasoning length per step</h2>{_grpo_html(grpo_steps, summary)}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sidreasoner evaluation</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation report: {html.escape(main_model)} vs baselines</h1>
<table>{fact_html}</table>
<h2>Metrics (full-catalog ranking, scored per item)</h2>
{_metric_table_html(metrics, ks, main_model)}
<p class="tag">HR@K: the target item is among the first K; NDCG@K: 1/log2(rank+1) for a hit at rank &le; K.
Valid SID: share of returned beams that are catalog SIDs (trie-constrained decoding guarantees 100%).
{html.escape(ALIGN_MODEL)} and {html.escape(REASON_MODEL)}: the alignment and reasoning-activation stages' models
(the paper's ablation), each in the mode it was trained for.</p>
{''.join(sections)}
<h2>Chart</h2>
<img alt="HR@K and NDCG@K per model" src="data:image/png;base64,{chart}">
<h2>Sample users</h2>
{''.join(examples) or '<p>(no sample users requested)</p>'}
</body></html>
"""
