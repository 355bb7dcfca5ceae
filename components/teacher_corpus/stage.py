"""Teacher corpus stage: items + samples + sid_map -> ``corpus``, ``reasoning`` and ``stats``.

1. Checks everything that can fail before any work: config, prompt templates, the API key's
   environment variable, the teacher's price when a cost budget is set, the inputs.
2. Builds the deterministic tasks from the catalog and the TRAIN split only.
3. Enriches the selected items and users through the teacher (litellm, cached) or the offline
   writer, validating every output.
4. Publishes the three outputs atomically and logs the accounting to MLflow (metrics, the stats
   JSON, a review sample of teacher outputs, the prompt template hashes).

Output contracts: :mod:`components.common.artifacts` (``corpus``, ``reasoning``); ``stats`` is JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from components.common import storage
from components.common.artifacts import CORPUS_SCHEMA, REASONING_SCHEMA, read_catalog, to_table, with_sid_space
from components.common.errors import ExpectedError
from components.common.lineage import StageRun
from components.common.stage import StageContext
from components.teacher_corpus import offline
from components.teacher_corpus.cache import ResponseCache
from components.teacher_corpus.config import TeacherCorpusConfig
from components.teacher_corpus.data import read_train_samples
from components.teacher_corpus.enrich import (
    Enricher,
    OfflineWriter,
    Review,
    TeacherWriter,
    build_jobs,
    select_items,
    select_users,
)
from components.teacher_corpus.tasks import build_tasks, items_in_scope
from components.teacher_corpus.teacher import Accounting, TeacherClient, TeacherError, resolve_api_key
from components.teacher_corpus.templates import load_templates

log = logging.getLogger(__name__)


class BudgetStop(ExpectedError, RuntimeError):
    """The budget ran out and ``teacher.budget.on_exhausted`` is ``fail``."""


def cache_root(cfg: TeacherCorpusConfig, ctx: StageContext) -> str:
    return cfg.cache_uri or storage.join(ctx.cache_uri, "teacher_corpus")


def run(cfg: TeacherCorpusConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    teacher_cfg = cfg.teacher
    client: TeacherClient | None = None
    if teacher_cfg.backend == "litellm":
        templates = load_templates(cfg.enrichment.prompt_version, cfg.enrichment.prompts_uri)
        cache = ResponseCache(cache_root(cfg, ctx), teacher_cfg.cache_lease_s)
        client = TeacherClient(teacher_cfg, cache, resolve_api_key(teacher_cfg), seed=ctx.seed)
        writer: TeacherWriter | OfflineWriter = TeacherWriter(client, templates)
        prompt_info = {step: {"hash": t.hash, "source": t.source} for step, t in templates.items()}
        tracker.log_params({"prompt_templates": {step: t.hash for step, t in templates.items()},
                            "teacher_cache": cache.root})

    catalog = read_catalog(inputs["sid_map"], inputs["items"])
    train, input_stats = read_train_samples(inputs["samples"], catalog)
    log.info("catalog: %d items (%d retired ignored); %d train samples", len(catalog.items),
             len(catalog.retired), len(train))
    if not client:
        interest_kinds = cfg.enrichment.interest_kinds
        followers = offline.KindFollowers.from_train(train, catalog.items) if interest_kinds > 1 else None
        writer = OfflineWriter(cfg.enrichment.reasoning_max_words, interest_kinds, followers)
        prompt_info = {"offline_writer": offline.VERSION}
        tracker.log_params({"offline_writer": offline.VERSION})

    task_rows = build_tasks(cfg.tasks, catalog, train, ctx.seed)
    item_ids = select_items(cfg.enrichment, items_in_scope(cfg.tasks, catalog, train), ctx.seed)
    users = select_users(cfg.enrichment, train, ctx.seed)
    jobs = build_jobs(catalog, item_ids, users)
    log.info("deterministic tasks: %d rows; enrichment (%s): %d items, %d users", len(task_rows),
             writer.source, len(item_ids), len(users))

    enricher = Enricher(writer, catalog, cfg.validation, Review(cfg.enrichment.review_samples, ctx.seed))
    width = 2 * teacher_cfg.concurrency if client else 1
    enrich_started = time.monotonic()
    if client:
        client.cache.open()
    try:
        asyncio.run(enricher.run(jobs, width, ctx.seed))
    except TeacherError:
        _log_teacher(tracker, client, time.monotonic() - enrich_started)
        raise
    enrich_s = time.monotonic() - enrich_started
    result = enricher.result(len(item_ids), len(users))

    teacher_stats = _log_teacher(tracker, client, enrich_s)
    if client and client.stats.budget_exhausted and teacher_cfg.budget.on_exhausted == "fail":
        raise BudgetStop(f"teacher budget reached ({client.stats.budget_exhausted}); "
                         "teacher.budget.on_exhausted=fail, so no output is written. Every response received "
                         "is cached: re-run with a larger budget to continue where this run stopped.")

    corpus = with_sid_space(to_table(task_rows + result.corpus_rows, CORPUS_SCHEMA), catalog.sid_space)
    reasoning = with_sid_space(to_table(result.reasoning_rows, REASONING_SCHEMA), catalog.sid_space)
    if users and reasoning.num_rows == 0:
        log.warning("no reasoning path survived validation (%d users selected): the reasoning output is empty",
                    len(users))

    tasks = Counter(corpus.column("task").to_pylist())
    stats: dict[str, Any] = {
        "inputs": {"catalog_items": len(catalog.items), "retired_items": len(catalog.retired),
                   "sid_levels": catalog.levels, **input_stats},
        "corpus": {"rows": corpus.num_rows, "tasks": dict(sorted(tasks.items())),
                   "sources": dict(sorted(Counter(corpus.column("source").to_pylist()).items()))},
        "reasoning": {"rows": reasoning.num_rows},
        "enrichment": result.stats,
        "teacher": teacher_stats,
        "prompt_templates": prompt_info,
        "seconds": {"total": round(time.monotonic() - started, 3), "enrichment": round(enrich_s, 3)},
    }
    digests = {"corpus": storage.write_parquet(corpus, outputs["corpus"]),
               "reasoning": storage.write_parquet(reasoning, outputs["reasoning"])}
    stats["outputs"] = digests
    digests["stats"] = storage.write_json(outputs["stats"], stats)

    tracker.log_metrics({k: v for k, v in stats.items() if k not in ("prompt_templates", "outputs", "teacher")})
    tracker.log_dict(stats, "teacher_corpus_stats.json")
    tracker.log_dict({"backend": writer.source, "model": writer.model, "records": result.review},
                     "teacher_samples.json")
    log.info("corpus: %d rows %s; reasoning: %d rows; teacher: %s", corpus.num_rows, dict(tasks),
             reasoning.num_rows, {k: teacher_stats[k] for k in ("backend", "requests", "cache_hits", "retries_total")})
    return {
        "corpus": {"digest": digests["corpus"], "rows": corpus.num_rows},
        "reasoning": {"digest": digests["reasoning"], "rows": reasoning.num_rows},
        "stats": {"digest": digests["stats"]},
    }


def _log_teacher(tracker: StageRun, client: TeacherClient | None, seconds: float) -> dict[str, Any]:
    """The teacher's accounting (also logged as MLflow metrics, even when the stage then fails).
    The offline writer makes no request and spends nothing: its accounting is all zeros."""
    if client is None:
        stats = {"backend": "offline", "model": None, "writer": offline.VERSION,
                 **Accounting().as_dict(cost_known=True), "seconds": round(seconds, 3), "requests_per_s": None}
    else:
        stats = {"backend": "litellm", "model": client.cfg.model, **client.stats.as_dict(client.pricing.known),
                 "cache_claims": dataclasses.asdict(client.cache.claims), "seconds": round(seconds, 3),
                 "requests_per_s": round(client.stats.requests / seconds, 3) if seconds > 0 else None}
    tracker.log_metrics({"teacher": stats})
    return stats
