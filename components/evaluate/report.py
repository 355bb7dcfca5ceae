"""What people read: the metric table (plain text for the demo's final printout, HTML for the
report) and a self-contained HTML report (inline CSS, the chart as a base64 PNG, no external
resource) with sample users: history titles, reasoning, and recommended titles with hits marked.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from components.evaluate.metrics import ALL_SPLITS

#: Models listed first, in this order; anything else after them alphabetically.
MODEL_ORDER = ("sidreasoner", "sasrec", "popularity")


def _ordered(metrics: pd.DataFrame) -> list[tuple[str, str, str]]:
    keys = metrics[["model", "mode", "split"]].drop_duplicates().itertuples(index=False, name=None)

    def order(key: tuple[str, str, str]) -> tuple:
        model, mode, split = key
        rank = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
        return (split == ALL_SPLITS, split, rank, model, mode != "thinking", mode)

    return sorted(keys, key=order)


def table_rows(metrics: pd.DataFrame, ks: Sequence[int] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows: one row per (model, mode, split), HR@K and NDCG@K per K."""
    if hasattr(metrics, "to_pandas"):  # a pyarrow table
        metrics = metrics.to_pandas()
    ks = sorted(ks or metrics["k"].unique())
    header = ["model", "mode", "split", "n"] + [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")] + [
        "valid SID", "ms/example"]
    rows = []
    for model, mode, split in _ordered(metrics):
        group = metrics[(metrics["model"] == model) & (metrics["mode"] == mode) & (metrics["split"] == split)]
        by_k = group.set_index("k")
        cells = [model, mode, split, str(int(group["n"].iloc[0]))]
        for k in ks:
            cells += [f"{by_k.at[k, 'hr']:.4f}", f"{by_k.at[k, 'ndcg']:.4f}"] if k in by_k.index else ["-", "-"]
        cells += [f"{group['valid_rate'].iloc[0]:.1%}", f"{group['latency_ms'].iloc[0]:.1f}"]
        rows.append(cells)
    return header, rows


def format_metrics_table(metrics: Any, ks: Sequence[int] | None = None) -> str:
    """The metric table as aligned plain text (``sidreasoner run`` prints it at the end).

    ``metrics`` is the stage's ``metrics`` artifact (a DataFrame or pyarrow Table); ``ks``
    restricts the columns (default: every K present).
    """
    header, rows = table_rows(metrics, ks)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


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
                  users: int = 6, top: int = 10) -> str:
    """The self-contained HTML report."""
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
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sidreasoner evaluation</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation report: {html.escape(main_model)} vs baselines</h1>
<table>{fact_html}</table>
<h2>Metrics (full-catalog ranking, scored per item)</h2>
{_metric_table_html(metrics, ks, main_model)}
<p class="tag">HR@K: the target item is among the first K; NDCG@K: 1/log2(rank+1) for a hit at rank &le; K.
Valid SID: share of returned beams that are catalog SIDs (trie-constrained decoding guarantees 100%).</p>
<h2>Chart</h2>
<img alt="HR@K and NDCG@K per model" src="data:image/png;base64,{chart}">
<h2>Sample users</h2>
{''.join(examples) or '<p>(no sample users requested)</p>'}
</body></html>
"""
