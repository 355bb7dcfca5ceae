"""Evaluate stage: model + sid_map + items + samples -> metrics, predictions, report, stats.

Artifacts:

* metrics (Parquet): model, mode, split, k, hr, ndcg, valid_rate, n, latency_ms. One row per
  (model, mode, split, K); models are the one under test (``evaluate.model_name``), ``sasrec``
  and ``popularity`` (mode ``direct``), and in a scheduled retraining run ``production`` (the
  production model, decoded like the model under test); split ``all`` joins several evaluated
  splits.
* predictions (Parquet): per model, mode and evaluated row: row, split, user_id, history,
  target, ranked_items, ranked_sids, ranked_titles, scores, rank (0-based, null on a miss),
  reasoning and reasoning_closed (thinking mode), latency_s.
* report (HTML): self-contained; also logged to MLflow.
* stats (JSON): sizes, decoding statistics (latency percentiles, valid-SID rate, think-block
  closure, reasoning length), baseline training info, output digests.

Every input problem (missing columns, collided SIDs, an empty split, a checkpoint lacking SID
tokens, a beam narrower than the largest K) is an error before any decoding starts.
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

from components.common import sid as sid_codec
from components.common import storage
from components.common.constrained import SidTrie, missing_tokens
from components.common.decoding import Decoded
from components.common.lineage import StageRun
from components.common.modeling import local_model_dir
from components.common.registry import PRODUCTION_MODEL, continued_from
from components.common.stage import Stage, StageContext
from components.evaluate.baselines import Ranking, SasrecBaseline, popularity
from components.evaluate.config import EvaluateConfig
from components.evaluate.data import Catalog, EvaluationInputError, load_catalog, load_samples, select_rows
from components.evaluate.decoding import decode_all
from components.evaluate.metrics import metric_rows, target_rank
from components.evaluate.report import format_metrics_table, render_report

log = logging.getLogger(__name__)

METRICS_SCHEMA = pa.schema([
    ("model", pa.string()), ("mode", pa.string()), ("split", pa.string()), ("k", pa.int32()),
    ("hr", pa.float64()), ("ndcg", pa.float64()), ("valid_rate", pa.float64()), ("n", pa.int64()),
    ("latency_ms", pa.float64()),
])
PREDICTIONS_SCHEMA = pa.schema([
    ("model", pa.string()), ("mode", pa.string()), ("row", pa.int64()), ("split", pa.string()),
    ("user_id", pa.string()), ("history", pa.list_(pa.string())), ("target", pa.string()),
    ("ranked_items", pa.list_(pa.string())), ("ranked_sids", pa.list_(pa.string())),
    ("ranked_titles", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())), ("rank", pa.int32()),
    ("reasoning", pa.string()), ("reasoning_closed", pa.bool_()), ("latency_s", pa.float64()),
])


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
            mapped = [(catalog.sid_to_item.get(s), s, score) for s, score in zip(result.sids, result.scores)]
            kept = [m for m in mapped if m[0] is not None]
            valid, total = valid + len(kept), total + len(mapped)
            record = _prediction(name, mode, row, [m[0] for m in kept], [m[1] for m in kept],
                                 [m[2] for m in kept], catalog, result.latency_s, result)
            record["beams"], record["valid_beams"] = len(mapped), len(kept)
            records.append(record)
        valid_counts[mode] = {"valid_beams": valid, "beams": total}
    return records, valid_counts


def _baseline_predictions(name: str, ranking: Ranking, rows: pd.DataFrame, catalog: Catalog,
                          latency: float) -> list[dict]:
    records = []
    for (_, row), items, scores in zip(rows.iterrows(), ranking.items, ranking.scores):
        record = _prediction(name, "direct", row, list(items), [catalog.item_sid[i] for i in items], scores,
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


def run(cfg: EvaluateConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    # 1. Inputs, validated before any model work.
    catalog = load_catalog(storage.read_parquet(inputs["sid_map"]), storage.read_parquet(inputs["items"]),
                           inputs["sid_map"], inputs["items"])
    samples = load_samples(storage.read_parquet(inputs["samples"]), inputs["samples"])
    rows = select_rows(samples, cfg.splits, cfg.max_examples, ctx.seed, catalog, inputs["samples"])
    train = samples[samples["split"] == "train"]
    if cfg.baselines and train.empty:
        raise EvaluationInputError(f"samples ({inputs['samples']}): the train split is empty; the baselines "
                                   f"{cfg.baselines} learn from it")
    ks = cfg.effective_ks()
    cache_dir = Path(ctx.cache_uri) / "models" if not storage.is_gcs(ctx.cache_uri) else None
    model_dir = local_model_dir(inputs["model"], cache_dir)
    check_checkpoint(model_dir, catalog)
    production_dir, production_sids, production = production_model(cfg, inputs, catalog, cache_dir)
    log.info("evaluate: %d rows (%s), catalog %d items, modes %s, beam %d, K %s, engine %s, %d shard(s)",
             len(rows), rows["split"].value_counts().to_dict(), len(catalog.sids), cfg.modes, cfg.beam_width, ks,
             cfg.engine, cfg.shards)

    # 2. The model under test, and in a scheduled run the production model on the same rows.
    histories = [[catalog.item_sid[i] for i in h] for h in rows["history"]]
    with tempfile.TemporaryDirectory(prefix="sidreasoner-eval-") as workdir:
        decoded = decode_all(str(model_dir), catalog.sids, histories, cfg, ctx.seed, Path(workdir))
    records, valid_counts = _model_predictions(cfg.model_name, rows, catalog, decoded)
    if production_dir is not None:
        log.info("evaluate: production version %s on the same %d rows", production["version"], len(rows))
        with tempfile.TemporaryDirectory(prefix="sidreasoner-eval-production-") as workdir:
            production_decoded = decode_all(str(production_dir), production_sids, histories, cfg, ctx.seed,
                                            Path(workdir))
        production_records, production_counts = _model_predictions(PRODUCTION_MODEL, rows, catalog,
                                                                    production_decoded)
        records += production_records
        production["decoding"] = _decoding_stats(production_decoded, production_counts)

    # 3. Baselines on the same rows.
    baseline_info: dict[str, Any] = {}
    if "popularity" in cfg.baselines:
        began = time.perf_counter()
        ranking = popularity(train, catalog.item_ids, len(rows), cfg.beam_width)
        records += _baseline_predictions("popularity", ranking, rows, catalog,
                                         (time.perf_counter() - began) / len(rows))
        baseline_info["popularity"] = ranking.info
    if "sasrec" in cfg.baselines:
        sasrec = SasrecBaseline(cfg.sasrec, ctx.seed)
        baseline_info["sasrec"] = sasrec.fit(train, samples[samples["split"] == "valid"], catalog.item_ids)
        began = time.perf_counter()
        ranking = sasrec.rank(rows["history"].tolist(), cfg.beam_width)
        records += _baseline_predictions("sasrec", ranking, rows, catalog, (time.perf_counter() - began) / len(rows))

    # 4. Metrics, report, stats; everything is computed before anything is published.
    scored = pd.DataFrame(records)
    metrics = metric_rows(scored, ks)
    predictions = scored.drop(columns=["beams", "valid_beams"])
    stats: dict[str, Any] = {
        "model_uri": str(inputs["model"]), "catalog_items": len(catalog.sids), "sid_levels": catalog.levels,
        "rows_per_split": {str(k): int(v) for k, v in rows["split"].value_counts().items()}, "beam_width": cfg.beam_width, "ks": ks,
        "engine": cfg.engine, "shards": cfg.shards, "modes": list(cfg.modes),
        "targets_outside_catalog": int((~rows["target"].isin(set(catalog.item_ids))).sum()),
        "decoding": _decoding_stats(decoded, valid_counts), "baselines": baseline_info, "production": production,
        "metrics": metrics.to_dict(orient="records"),
    }
    html = render_report(metrics, predictions, stats, catalog.titles, catalog.item_sid, main_model=cfg.model_name,
                         users=cfg.report_users, top=min(cfg.beam_width, 10))
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
    tracker.log_metrics({"decoding": stats["decoding"], "rows": len(rows), "catalog_items": len(catalog.sids)})
    tracker.log_dict(stats, "evaluate_stats.json")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "report.html"
        local.write_text(html, encoding="utf-8")
        tracker.log_artifact(local)
    log.info("evaluate: metrics\n%s", format_metrics_table(metrics))
    return {
        "metrics": {"digest": digests["metrics"], "rows": metrics_tbl.num_rows},
        "predictions": {"digest": digests["predictions"], "rows": predictions_tbl.num_rows},
        "report": {"digest": digests["report"]},
        "stats": {"digest": digests["stats"]},
    }


STAGE = Stage(
    name="evaluate",
    config=EvaluateConfig,
    run=run,
    description="Score a model with trie-constrained beam search (direct and thinking modes) over the full "
                "catalog, beside popularity and SASRec; write metrics, predictions, an HTML report and stats.",
    inputs={"model": "save_pretrained model folder (with SID tokens and sid_vocab.json)",
            "sid_map": "SID map Parquet (item_id, codes, sid, status)",
            "items": "items Parquet (item_id, title, ...)",
            "samples": "samples Parquet (user_id, history, target, timestamp, split)"},
    optional_inputs={"previous": "previous_model's JSON (scheduled retraining): score the production model "
                                 "on the same rows"},
    outputs={"metrics": "metrics.parquet", "predictions": "predictions.parquet", "report": "report.html",
             "stats": "stats.json"},
)
