"""Evaluate stage: model + sid_map + items + samples (+ the baselines' rankings) -> metrics,
predictions, report, stats.

Artifacts (contracts in :mod:`components.common.artifacts`):

* metrics: one row per (model, mode, split, K); models are the one under test
  (``evaluate.model_name``, GRPO's model), the baselines (mode ``direct``, from the ``baselines``
  stage's rankings of the same rows), with ``evaluate.ablation`` the earlier stages' models
  (``align_sft`` in direct mode, ``reason_sft`` in thinking mode), and in a scheduled retraining
  run ``production`` (the production model, decoded like the model under test); split ``all``
  joins several evaluated splits.
* predictions: per model, mode and evaluated row: row, split, user_id, history, target,
  ranked_items, ranked_sids, ranked_titles, scores, rank (0-based, null on a miss), reasoning and
  reasoning_closed (thinking mode), latency_s.
* report (HTML): self-contained; also logged to MLflow.
* stats (JSON): sizes, decoding statistics (latency percentiles, valid-SID rate, think-block
  closure, reasoning length; per decoded model), ``comparisons`` (paired differences of HR/NDCG@K
  with bootstrap 95% intervals, :mod:`components.evaluate.compare`), GRPO's per-step summary
  (ablation), output digests.

Every input problem (missing columns, collided SIDs, an empty split, a checkpoint lacking SID
tokens, a beam narrower than the largest K, rankings of other rows) is an error before any
decoding starts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from components.common import artifacts, storage
from components.common import sid as sid_codec
from components.common.artifacts import METRICS_SCHEMA, PREDICTIONS_SCHEMA, Catalog
from components.common.constrained import SidTrie, missing_tokens
from components.common.decoding import Decoded
from components.common.decoding_config import Mode
from components.common.errors import InputError
from components.common.lineage import StageRun
from components.common.modeling import local_model_dir
from components.common.registry import PRODUCTION_MODEL, continued_from
from components.common.stage import StageContext
from components.evaluate.compare import compare, mlflow_metrics
from components.evaluate.config import ALIGN_MODEL, REASON_MODEL, EvaluateConfig
from components.evaluate.data import samples_frame, select_rows
from components.evaluate.decoding import decode_all
from components.evaluate.metrics import metric_rows, target_rank
from components.evaluate.report import format_comparisons_table, format_metrics_table, render_report

log = logging.getLogger(__name__)

#: The paper's ablation: each earlier stage's model, the input naming it, and the one mode it is
#: scored in (the mode it was trained for).
ABLATION_MODELS = {ALIGN_MODEL: ("align_model", "direct"), REASON_MODEL: ("reason_model", "thinking")}


def check_checkpoint(model_dir: Path, catalog: Catalog) -> None:
    """Fail before decoding when the checkpoint's tokenizer lacks SID tokens of the catalog."""
    from transformers import AutoTokenizer

    SidTrie.from_tokenizer(AutoTokenizer.from_pretrained(model_dir), catalog.sids)


def _prediction(model: str, mode: str, row: pd.Series, items: list[str], sids: list[str], scores: list[float],
                catalog: Catalog, latency: float, decoded: Decoded | None = None) -> dict[str, Any]:
    rank = target_rank(items, row["target"])
    return {"model": model, "mode": mode, "row": int(row["row"]), "split": row["split"],
            "user_id": str(row["user_id"]), "history": list(row["history"]), "target": str(row["target"]),
            "ranked_items": items, "ranked_sids": sids, "ranked_titles": [catalog.title(i) for i in items],
            "scores": [float(s) for s in scores], "rank": rank,
            "reasoning": decoded.reasoning if decoded else None,
            "reasoning_closed": decoded.reasoning_closed if decoded else None, "latency_s": float(latency)}


def _model_predictions(name: str, rows: pd.DataFrame, catalog: Catalog,
                       decoded: Mapping[str, list[Decoded]]) -> tuple[list[dict], dict[str, dict]]:
    records, valid_counts = [], {}
    for mode, results in decoded.items():
        valid = total = 0
        for (_, row), result in zip(rows.iterrows(), results):
            mapped = [(catalog.item_of.get(s), s, score) for s, score in zip(result.sids, result.scores)]
            kept = [m for m in mapped if m[0] is not None]
            valid, total = valid + len(kept), total + len(mapped)
            record = _prediction(name, mode, row, [m[0] for m in kept], [m[1] for m in kept],
                                 [m[2] for m in kept], catalog, result.latency_s, result)
            record["beams"], record["valid_beams"] = len(mapped), len(kept)
            records.append(record)
        valid_counts[mode] = {"valid_beams": valid, "beams": total}
    return records, valid_counts


def baseline_predictions(rankings_uri: str, rows: pd.DataFrame, catalog: Catalog, top: int) -> list[dict]:
    """The baselines' ranked lists of the evaluated rows (cut to the beam width), as predictions."""
    table = storage.read_parquet(rankings_uri).to_pandas()
    records = []
    for model, ranked in table.groupby("model", sort=False):
        by_row = dict(zip(ranked["row"], zip(ranked["ranked_items"], ranked["scores"], ranked["latency_s"])))
        missing = [int(r) for r in rows["row"] if r not in by_row]
        if missing:
            raise InputError(f"rankings {rankings_uri}: model {model!r} has no ranking of sample row(s) "
                             f"{missing[:5]}; were they made from these samples?")
        for _, row in rows.iterrows():
            items, scores, latency = by_row[row["row"]]
            items, scores = list(items)[:top], list(scores)[:top]
            record = _prediction(model, "direct", row, items, [catalog.sid_of.get(i, "") for i in items], scores,
                                 catalog, latency)
            record["beams"] = record["valid_beams"] = len(items)
            records.append(record)
    return records


def _decoding_stats(decoded: Mapping[str, list[Decoded]], valid_counts: Mapping[str, dict]) -> dict[str, Any]:
    stats = {}
    for mode, results in decoded.items():
        latency = np.array([d.latency_s for d in results]) * 1000.0
        entry = {"latency_ms_mean": float(latency.mean()), "latency_ms_p50": float(np.percentile(latency, 50)),
                 "latency_ms_p95": float(np.percentile(latency, 95)),
                 "valid_rate": valid_counts[mode]["valid_beams"] / max(valid_counts[mode]["beams"], 1),
                 "beams_per_row_mean": valid_counts[mode]["beams"] / max(len(results), 1)}
        if mode == "thinking":
            entry["reasoning_closed_rate"] = float(np.mean([bool(d.reasoning_closed) for d in results]))
            entry["reasoning_tokens_mean"] = float(np.mean([d.reasoning_tokens or 0 for d in results]))
        stats[mode] = entry
    return stats


def _reasoning_tokens_per_s(decoded: Mapping[str, list[Decoded]]) -> float | None:
    """Reasoning tokens generated per second of thinking-mode decoding (per decoder: shards add
    up their time); None without thinking mode."""
    rows = decoded.get("thinking", [])
    seconds = sum(d.latency_s for d in rows)
    return sum(d.reasoning_tokens or 0 for d in rows) / seconds if rows and seconds else None


def production_model(cfg: EvaluateConfig, inputs: Mapping[str, str], catalog: Catalog,
                     cache_dir: Path | None) -> tuple[Path | None, list[str], dict[str, Any]]:
    """The production model's folder when this run scores it beside the model under test (else
    None), the catalog SIDs it can name, and what to record about it (version, URI, or why it is
    not scored).

    Items that entered the catalog after the production model was trained may use SID codes its
    vocabulary lacks: it cannot recommend them, so its beams range over the SIDs it can name, and
    rows whose target is such an item count as its misses, as they would in service."""
    if "previous" not in inputs:
        return None, [], {"scored": False, "reason": "not a scheduled retraining run"}
    previous = continued_from(inputs, "nothing to score beside this run's model")
    if previous is None:
        return None, [], {"scored": False, "reason": "no production model yet"}
    info = {"scored": False, "version": previous.version, "model_uri": previous.model_uri}
    if not cfg.score_production:
        return None, [], {**info, "reason": "evaluate.score_production is off"}
    from transformers import AutoTokenizer

    model_dir = local_model_dir(previous.model_uri, cache_dir)
    sid_tokens = {sid: sid_codec.split_tokens(sid) for sid in catalog.sids}
    tokens = sorted({tok for toks in sid_tokens.values() for tok in toks})
    unknown = set(missing_tokens(AutoTokenizer.from_pretrained(model_dir), tokens))
    nameable = [sid for sid, toks in sid_tokens.items() if unknown.isdisjoint(toks)]
    info["unnameable_items"] = len(catalog.sids) - len(nameable)
    if len(nameable) < cfg.beam_width:
        reason = (f"production version {previous.version} can name {len(nameable)} of this catalog's "
                  f"{len(catalog.sids)} SIDs, fewer than the beam width {cfg.beam_width}")
        log.warning("evaluate: %s; promote falls back to its recorded score", reason)
        return None, [], {**info, "reason": reason}
    if unknown:
        log.info("evaluate: production version %s lacks SID token(s) %s: %d new item(s) it cannot recommend",
                 previous.version, sorted(unknown)[:8], info["unnameable_items"])
    return model_dir, nameable, {**info, "scored": True, "reason": "decoded on the same rows as the model under test"}


def ablation_models(cfg: EvaluateConfig, inputs: Mapping[str, str],
                    cache_dir: Path | None) -> tuple[list[tuple[str, Path, list[Mode]]], dict[str, Any]]:
    """The earlier stages' models this run scores, as (name, folder, modes), and what to record
    about each (its URI and mode, or why it is not scored)."""
    given = [name for name, (key, _) in ABLATION_MODELS.items() if key in inputs]
    if not cfg.ablation:
        if given:
            log.info("evaluate: ablation is off; not scoring the given %s", given)
        return [], {name: {"scored": False, "reason": "evaluate.ablation is off"} for name in ABLATION_MODELS}
    runs, info = [], {}
    for name, (key, mode) in ABLATION_MODELS.items():
        if key not in inputs:
            log.warning("evaluate: ablation is on but no %s input was given: %s is not scored", key, name)
            info[name] = {"scored": False, "reason": f"no {key} input"}
            continue
        runs.append((name, local_model_dir(inputs[key], cache_dir), [mode]))
        info[name] = {"scored": True, "model_uri": str(inputs[key]), "mode": mode}
    return runs, info


def grpo_steps(uri: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """GRPO's per-step table (reward, reasoning length, ...) and its summary from grpo's stats."""
    stats = storage.read_json(uri)
    steps = stats.get("steps") if isinstance(stats, dict) else None
    if not isinstance(steps, list) or not all(isinstance(r, dict) and "step" in r for r in steps):
        raise InputError(f"grpo_stats {uri}: no per-step table ('steps': a list of records with 'step'); is it "
                         "the grpo stage's stats?")
    return steps, stats.get("summary") or {}


def run(cfg: EvaluateConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    # 1. Inputs, validated before any model work.
    catalog = artifacts.read_catalog(inputs["sid_map"], inputs["items"])
    samples = samples_frame(artifacts.read_samples(inputs["samples"]))
    rows = select_rows(samples, cfg.splits, cfg.max_examples, ctx.seed, catalog, inputs["samples"])
    baselines = baseline_predictions(inputs["rankings"], rows, catalog, cfg.beam_width) if "rankings" in inputs else []
    ks = cfg.effective_ks()
    cache_dir = Path(ctx.cache_uri) / "models" if not storage.is_gcs(ctx.cache_uri) else None
    model_dir = local_model_dir(inputs["model"], cache_dir)
    check_checkpoint(model_dir, catalog)
    stage_models, ablation = ablation_models(cfg, inputs, cache_dir)
    for _, directory, _ in stage_models:
        check_checkpoint(directory, catalog)
    steps, grpo_summary = grpo_steps(inputs["grpo_stats"]) if cfg.ablation and "grpo_stats" in inputs else ([], {})
    production_dir, production_sids, production = production_model(cfg, inputs, catalog, cache_dir)
    log.info("evaluate: %d rows (%s), catalog %d items, modes %s, beam %d, K %s, engine %s, %d shard(s)",
             len(rows), rows["split"].value_counts().to_dict(), len(catalog.sids), cfg.modes, cfg.beam_width, ks,
             cfg.engine, cfg.shards)

    # 2. Every model on the same rows: the model under test in each mode, the earlier stages'
    #    models each in its own mode (ablation), and in a scheduled run the production model.
    histories = [[catalog.sid_of[i] for i in h] for h in rows["history"]]
    decodings = [(cfg.model_name, model_dir, catalog.sids, list(cfg.modes)),
                 *((name, directory, catalog.sids, modes) for name, directory, modes in stage_models)]
    if production_dir is not None:
        decodings.append((PRODUCTION_MODEL, production_dir, production_sids, list(cfg.modes)))
    records, decoding, seconds = [], {}, {}
    for name, directory, sids, modes in decodings:
        log.info("evaluate: decoding %s (%s) on %d rows", name, ", ".join(modes), len(rows))
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"sidreasoner-eval-{name}-") as workdir:
            decoded = decode_all(str(directory), sids, histories, cfg, ctx.seed, Path(workdir), modes)
        model_records, valid_counts = _model_predictions(name, rows, catalog, decoded)
        records += model_records
        decoding[name] = _decoding_stats(decoded, valid_counts)
        if name == cfg.model_name:
            tokens_per_s = _reasoning_tokens_per_s(decoded)
        seconds[name] = round(time.perf_counter() - began, 3)
    for name, info in ablation.items():
        if info["scored"]:
            info["decoding"] = decoding[name]
    if production_dir is not None:
        production["decoding"] = decoding[PRODUCTION_MODEL]

    # 3. The baselines' rankings of the same rows.
    records += baselines

    # 4. Metrics, paired comparisons, report, stats; everything is computed before anything is published.
    scored = pd.DataFrame(records)
    metrics = metric_rows(scored, ks)
    comparisons = compare(scored, cfg.model_name, cfg.effective_comparison_ks(), cfg.bootstrap_samples, ctx.seed)
    predictions = scored.drop(columns=["beams", "valid_beams"])
    stats: dict[str, Any] = {
        "model_uri": str(inputs["model"]), "catalog_items": len(catalog.sids), "sid_levels": catalog.levels,
        "rows_per_split": {str(k): int(v) for k, v in rows["split"].value_counts().items()},
        "beam_width": cfg.beam_width, "ks": ks, "engine": cfg.engine, "shards": cfg.shards, "modes": list(cfg.modes),
        "targets_outside_catalog": int((~rows["target"].isin(set(catalog.item_ids))).sum()),
        "decoding": decoding[cfg.model_name], "decoding_seconds": seconds, "ablation": ablation,
        "production": production, "tokens_per_s": tokens_per_s,
        "metrics": metrics.to_dict(orient="records"), "comparisons": comparisons,
        "grpo": {"summary": grpo_summary, "logged_steps": len(steps)} if steps else None,
    }
    titles = {item: catalog.title(item) for item in catalog.sid_of}
    html = render_report(metrics, predictions, stats, titles, catalog.sid_of, main_model=cfg.model_name,
                         users=cfg.report_users, top=min(cfg.beam_width, 10), grpo_steps=steps)
    metrics_tbl = pa.Table.from_pandas(metrics, schema=METRICS_SCHEMA, preserve_index=False)
    predictions_tbl = pa.Table.from_pandas(predictions[PREDICTIONS_SCHEMA.names], schema=PREDICTIONS_SCHEMA,
                                           preserve_index=False)
    digests = {
        "metrics": storage.write_parquet(metrics_tbl, outputs["metrics"]),
        "predictions": storage.write_parquet(predictions_tbl, outputs["predictions"]),
        "report": storage.write_text(outputs["report"], html),
    }
    stats["outputs"] = dict(digests)
    digests["stats"] = storage.write_json(outputs["stats"], stats)

    # 5. Lineage.
    flat = {}
    for m in metrics.itertuples(index=False):
        prefix = f"{m.model}.{m.mode}.{m.split}"
        flat[f"{prefix}.hr_at_{m.k}"], flat[f"{prefix}.ndcg_at_{m.k}"] = m.hr, m.ndcg
        flat[f"{prefix}.valid_rate"], flat[f"{prefix}.latency_ms"] = m.valid_rate, m.latency_ms
    tracker.log_metrics(flat)
    tracker.log_metrics({"decoding": decoding, "decoding_seconds": seconds, "rows": len(rows),
                         "catalog_items": len(catalog.sids)})
    tracker.log_metrics(mlflow_metrics(comparisons))
    tracker.log_dict(stats, "evaluate_stats.json")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "report.html"
        local.write_text(html, encoding="utf-8")
        tracker.log_artifact(local)
    log.info("evaluate: metrics\n%s", format_metrics_table(metrics))
    if comparisons:
        log.info("evaluate: paired differences\n%s", format_comparisons_table(comparisons))
    return {
        "metrics": {"digest": digests["metrics"], "rows": metrics_tbl.num_rows},
        "predictions": {"digest": digests["predictions"], "rows": predictions_tbl.num_rows},
        "report": {"digest": digests["report"]},
        "stats": {"digest": digests["stats"]},
    }
