"""Stage ``baselines``: popularity, SASRec and SASRec-CE, trained on the train split, ranking the
full catalog (the sid_map's non-retired items, as the model's constrained decoder does) for every
valid and test row.

Output ``rankings`` (Parquet, :data:`components.common.artifacts.RANKINGS_SCHEMA`): per model and
sample row, the top ``top_k`` items with their scores and the ranking time per row; ``evaluate``
scores the rows it evaluates, beside the model, on the same rows. ``stats``: training facts per
model (epochs, best valid NDCG@10, ...; SASRec-CE: every grid setting tried and the one chosen).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import pandas as pd

from components.baselines.config import BaselinesConfig
from components.baselines.models import Ranking, SasrecBaseline, popularity, tune_sasrec
from components.common import artifacts, storage
from components.common.errors import InputError
from components.common.lineage import StageRun
from components.common.stage import StageContext

log = logging.getLogger(__name__)

#: The splits whose rows are ranked (the train split is what the baselines learn from).
RANKED_SPLITS = ("valid", "test")


def _frame(samples: list[artifacts.Sample]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(s) for s in samples], columns=[f for f in artifacts.Sample.__dataclass_fields__])
    frame["history"] = [list(h) for h in frame["history"]]
    return frame


def rank(model: str, cfg: BaselinesConfig, train: pd.DataFrame, valid: pd.DataFrame, catalog_items: list[str],
         histories: list[list[str]], seed: int) -> tuple[Ranking, dict[str, Any]]:
    """Train ``model`` and rank the catalog after each history; returns the ranking and what
    training did."""
    top = min(cfg.top_k, len(catalog_items))
    if model == "popularity":
        ranking = popularity(train, catalog_items, len(histories), top)
        return ranking, ranking.info
    if model == "sasrec_ce":
        baseline, info = tune_sasrec(cfg.sasrec_ce, train, valid, catalog_items, seed)
    else:
        baseline = SasrecBaseline(cfg.sasrec, seed)
        info = baseline.fit(train, valid, catalog_items)
    return baseline.rank(histories, top), info


def run(cfg: BaselinesConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    catalog = artifacts.read_catalog(inputs["sid_map"])
    samples = artifacts.read_samples(inputs["samples"])
    train, valid = _frame(samples.split("train")), _frame(samples.split("valid"))
    if train.empty:
        raise InputError(f"samples {inputs['samples']}: the train split is empty; the baselines learn from it "
                         f"(rows per split: {samples.counts()})")
    ranked_rows = [s for s in samples.rows if s.split in RANKED_SPLITS]
    histories = [list(s.history) for s in ranked_rows]
    records, info = [], {}
    for model in cfg.models:
        began = time.perf_counter()
        ranking, info[model] = rank(model, cfg, train, valid, list(catalog.item_ids), histories, ctx.seed)
        info[model]["seconds"] = round(time.perf_counter() - began, 3)
        per_row = info[model]["seconds"] / max(len(ranked_rows), 1)
        records += [{"model": model, "row": sample.row, "ranked_items": items, "scores": [float(x) for x in scores],
                     "latency_s": per_row}
                    for sample, items, scores in zip(ranked_rows, ranking.items, ranking.scores, strict=True)]
        log.info("baselines: %s ranked %d rows in %.1fs", model, len(ranked_rows), info[model]["seconds"])
    table = artifacts.to_table(records, artifacts.RANKINGS_SCHEMA)
    stats = {"models": info, "rows_ranked": len(ranked_rows), "catalog_items": len(catalog.item_ids),
             "train_rows": len(train), "top_k": min(cfg.top_k, len(catalog.item_ids))}
    digests = {"rankings": storage.write_parquet(table, outputs["rankings"])}
    stats["outputs"] = dict(digests)
    digests["stats"] = storage.write_json(outputs["stats"], stats)
    tracker.log_metrics({"models": info, "rows_ranked": len(ranked_rows)})
    tracker.log_dict(stats, "baselines_stats.json")
    return {"rankings": {"digest": digests["rankings"], "rows": table.num_rows},
            "stats": {"digest": digests["stats"]}}
