"""Two-step teacher enrichment (RECIPE.md section 3, groups C and D), with validation.

* Item-centric, per selected item: ``item_analysis`` (title, brand, categories, description)
  then ``item_narrative`` (a paragraph that names the item only by its SID) -> an
  ``item_narrative`` corpus row.
* User-centric, per selected train sample: ``user_reasoning`` (a reasoning path from the
  history that never reveals the target) -> a ``reasoning`` row; then ``user_narrative``
  (recites the history SIDs, weaves in the reasoning, ends with the target SID) -> a
  ``user_narrative`` corpus row.

Each step's output is validated (:mod:`components.teacher_corpus.validation`). A rejected output
is re-requested up to ``validation.retries_on_rejection`` times, then the entity is dropped; every
rejection is counted by step and reason. A writer produces the text: :class:`TeacherWriter`
(prompt templates + :class:`~components.teacher_corpus.teacher.TeacherClient`) or
:class:`OfflineWriter` (:mod:`components.teacher_corpus.offline`).

Jobs run on a pool of workers; a job's steps are sequential, jobs are concurrent. When the
budget runs out, jobs go on (their cached answers are still used) but nothing new is requested;
on a fatal teacher error the workers stop taking jobs, let the requests in flight land in the
cache, and the error is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.common.artifacts import Catalog, Item, Sample
from components.common.logs import Progress
from components.teacher_corpus import offline, validation
from components.teacher_corpus.config import EnrichmentConfig, ValidationConfig
from components.teacher_corpus.teacher import BudgetExhausted, RequestRejected, TeacherClient, TeacherError
from components.teacher_corpus.templates import PromptTemplate, combined_hash

log = logging.getLogger(__name__)

STEPS = ("item_analysis", "item_narrative", "user_reasoning", "user_narrative")


@dataclass(frozen=True)
class ItemJob:
    index: int
    item: Item


@dataclass(frozen=True)
class UserJob:
    index: int
    sample: Sample
    history: tuple[Item, ...]
    target: Item


Job = ItemJob | UserJob


class Writer(Protocol):
    """Writes the text of one step of one job."""

    source: str
    """The corpus ``source`` of its rows: teacher | offline."""
    model: str | None
    """The corpus ``teacher_model`` of its rows."""

    def prompt_hash(self, kind: str) -> str | None:
        """The ``prompt_hash`` of an ``item`` or ``user`` row."""

    async def write(self, step: str, job: Job, prior: str | None, attempt: int) -> str:
        """The output of ``step`` (``prior``: the step-1 output, for step 2)."""


class TeacherWriter:
    """Renders the step's template and asks the teacher client."""

    source = "teacher"

    def __init__(self, client: TeacherClient, templates: dict[str, PromptTemplate]):
        self.client, self.templates = client, templates
        self.model = client.cfg.model
        self._hashes = {"item": combined_hash(templates["item_analysis"], templates["item_narrative"]),
                        "user": combined_hash(templates["user_reasoning"], templates["user_narrative"])}

    def prompt_hash(self, kind: str) -> str | None:
        return self._hashes[kind]

    @staticmethod
    def fields(step: str, job: Job, prior: str | None) -> dict[str, str]:
        """The template placeholders of ``step`` for ``job``."""
        if isinstance(job, ItemJob):
            item = job.item
            if step == "item_analysis":
                return {"title": item.title, "brand": item.brand or "unknown",
                        "categories": " > ".join(item.categories) or "unknown",
                        "description": item.description or "(no description)"}
            return {"sid": item.sid, "analysis": prior or ""}
        if step == "user_reasoning":
            lines = [f"{k}. {it.sid} | {it.title} | {it.category or 'uncategorised'} | "
                     f"{offline.excerpt(it.description, 200) or 'no description'}"
                     for k, it in enumerate(job.history, 1)]
            return {"history": "\n".join(lines), "history_length": str(len(job.history)),
                    "target_title": job.target.title, "target_category": job.target.category or "unknown"}
        return {"history_sids": ", ".join(it.sid for it in job.history), "reasoning": prior or "",
                "target_sid": job.target.sid}

    async def write(self, step: str, job: Job, prior: str | None, attempt: int) -> str:
        messages = self.templates[step].render(self.fields(step, job, prior))
        return (await self.client.complete(messages, attempt=attempt)).text


class OfflineWriter:
    """The deterministic offline writer (no API); reasoning paths of at most
    ``reasoning_max_words`` words (``enrichment.reasoning_max_words``) whose interest names
    ``interest_kinds`` kinds, ordered by ``followers`` (``enrichment.interest_kinds``)."""

    source = "offline"
    model = None

    def __init__(self, reasoning_max_words: int, interest_kinds: int = 1,
                 followers: offline.KindFollowers | None = None):
        if interest_kinds > 1 and followers is None:
            raise ValueError("an interest of several kinds needs the train split's kind transitions (followers)")
        self.reasoning_max_words, self.interest_kinds, self.followers = reasoning_max_words, interest_kinds, followers

    def prompt_hash(self, kind: str) -> str | None:
        return None

    async def write(self, step: str, job: Job, prior: str | None, attempt: int) -> str:
        if isinstance(job, ItemJob):
            return offline.item_analysis(job.item) if step == "item_analysis" else offline.item_narrative(job.item)
        if step == "user_reasoning":
            named = (self.followers.interest(job.history, job.target, self.interest_kinds)
                     if self.interest_kinds > 1 else ())
            return offline.user_reasoning(job.sample, job.history, job.target, self.reasoning_max_words, named)
        if self.interest_kinds > 1:
            # the narrative is told in hindsight (it ends with the next item's SID), so it restates the
            # path that names the kind bought; the path that hedges is what the model learns to think
            prior = offline.user_reasoning(job.sample, job.history, job.target, self.reasoning_max_words)
        return offline.user_narrative(job.sample, job.history, job.target, prior or "")


def select_items(cfg: EnrichmentConfig, item_ids: Sequence[str], seed: int) -> list[str]:
    """Items for item-centric enrichment: all, or a seeded sample of ``cfg.items``."""
    if cfg.items is None or cfg.items >= len(item_ids):
        return list(item_ids)
    return sorted(random.Random(f"{seed}:enrich_items").sample(list(item_ids), cfg.items))


def select_users(cfg: EnrichmentConfig, train: Sequence[Sample], seed: int) -> list[Sample]:
    """Train samples for user-centric enrichment (see ``EnrichmentConfig.user_samples``)."""
    if cfg.user_samples == "latest":
        latest: dict[str, Sample] = {}
        for sample in train:
            best = latest.get(sample.user_id)
            if best is None or sample.timestamp >= best.timestamp:
                latest[sample.user_id] = sample
        candidates = [latest[u] for u in sorted(latest)]
    else:
        candidates = list(train)
    candidates = [s for s in candidates if len(s.history) >= cfg.min_history]
    if cfg.users is None or cfg.users >= len(candidates):
        return candidates
    keep = sorted(random.Random(f"{seed}:enrich_users").sample(range(len(candidates)), cfg.users))
    return [candidates[i] for i in keep]


@dataclass
class Review:
    """A deterministic sample of outputs for human review: per step, the ``size`` accepted and
    ``size`` rejected outputs with the smallest hash of (seed, step, entity, attempt) — the same
    records whatever order the concurrent jobs finish in."""

    size: int
    seed: int
    _heaps: dict[tuple[str, bool], list[tuple[int, int, dict[str, Any]]]] = field(default_factory=dict)
    _counter: int = 0

    def add(self, step: str, entity: str, attempt: int, record: dict[str, Any]) -> None:
        if self.size <= 0:
            return
        rank = int(hashlib.sha256(f"{self.seed}:{step}:{entity}:{attempt}".encode()).hexdigest()[:15], 16)
        heap = self._heaps.setdefault((step, not record["rejected_for"]), [])
        self._counter += 1
        item = (-rank, self._counter, record)
        if len(heap) < self.size:
            heapq.heappush(heap, item)
        elif -rank > heap[0][0]:
            heapq.heapreplace(heap, item)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for (step, accepted) in sorted(self._heaps):
            out.extend(r for _, _, r in sorted(self._heaps[(step, accepted)], key=lambda x: -x[0]))
        return out


@dataclass
class EnrichmentResult:
    corpus_rows: list[dict[str, Any]]
    reasoning_rows: list[dict[str, Any]]
    stats: dict[str, Any]
    review: list[dict[str, Any]]


class Enricher:
    """Runs the jobs through a writer, validating every output."""

    def __init__(self, writer: Writer, catalog: Catalog, checks: ValidationConfig, review: Review):
        self.writer, self.catalog, self.checks, self.review = writer, catalog, checks, review
        self.generic_words = validation.generic_words(catalog.items.values())
        self.accepted: Counter = Counter()
        self.dropped: Counter = Counter()
        self.skipped_budget: Counter = Counter()
        self.rejections: dict[str, Counter] = {step: Counter() for step in STEPS}
        self._items: list[tuple[int, dict[str, Any]]] = []
        self._users: list[tuple[int, dict[str, Any]]] = []
        self._reasoning: list[tuple[int, dict[str, Any]]] = []

    # -- validation per step -----------------------------------------------------------------

    def _check(self, step: str, job: Job, text: str) -> list[str]:
        levels, sids, bounds = self.catalog.levels, frozenset(self.catalog.item_of), getattr(self.checks, step)
        if step == "item_analysis":
            return validation.check_item_analysis(text, levels, sids, bounds)
        if step == "item_narrative":
            return validation.check_item_narrative(text, job.item.sid, levels, sids, bounds)
        if step == "user_reasoning":
            return validation.check_user_reasoning(text, job.target, job.history, levels, sids, bounds,
                                                   self.generic_words)
        return validation.check_user_narrative(text, [it.sid for it in job.history], job.target.sid,
                                               levels, sids, bounds)

    @staticmethod
    def _entity(job: Job) -> str:
        if isinstance(job, ItemJob):
            return f"item:{job.item.item_id}"
        return f"user:{job.sample.user_id}@{job.sample.timestamp}"

    def _context(self, job: Job) -> dict[str, Any]:
        if isinstance(job, ItemJob):
            return {"item_id": job.item.item_id, "sid": job.item.sid, "title": job.item.title}
        return {"user_id": job.sample.user_id, "history_sids": [it.sid for it in job.history],
                "target_sid": job.target.sid, "target_title": job.target.title}

    async def _step(self, step: str, job: Job, prior: str | None = None) -> str | None:
        """The accepted output of ``step``, or None when every attempt was rejected."""
        for attempt in range(self.checks.retries_on_rejection + 1):
            try:
                raw = await self.writer.write(step, job, prior, attempt)
            except BudgetExhausted:
                self.skipped_budget[step] += 1
                raise
            except RequestRejected:
                self.rejections[step]["provider_refused"] += 1
                self.dropped[step] += 1
                return None
            text = validation.normalize(raw)
            reasons = self._check(step, job, text)
            self.review.add(step, self._entity(job), attempt, {
                "step": step, **self._context(job), "attempt": attempt, "output": text,
                "rejected_for": reasons})
            if not reasons:
                self.accepted[step] += 1
                return text
            self.rejections[step].update(reasons)
        self.dropped[step] += 1
        return None

    # -- jobs --------------------------------------------------------------------------------

    async def _item(self, job: ItemJob) -> None:
        analysis = await self._step("item_analysis", job)
        if analysis is None:
            return
        narrative = await self._step("item_narrative", job, analysis)
        if narrative is None:
            return
        self._items.append((job.index, self._narrative_row("item_narrative", narrative, job.item.sid,
                                                           item_id=job.item.item_id, user_id=None, prompts="item")))

    async def _user(self, job: UserJob) -> None:
        reasoning = await self._step("user_reasoning", job)
        if reasoning is None:
            return
        self._reasoning.append((job.index, {
            "user_id": job.sample.user_id, "history_item_ids": list(job.sample.history),
            "history_sids": [it.sid for it in job.history], "reasoning": reasoning,
            "target_item_id": job.sample.target, "target_sid": job.target.sid, "source": self.writer.source}))
        narrative = await self._step("user_narrative", job, reasoning)
        if narrative is None:
            return
        self._users.append((job.index, self._narrative_row("user_narrative", narrative, job.target.sid,
                                                           item_id=job.sample.target, user_id=job.sample.user_id,
                                                           prompts="user")))

    def _narrative_row(self, task: str, text: str, target: str, *, item_id: str, user_id: str | None,
                       prompts: str) -> dict[str, Any]:
        """A corpus row of a teacher-written narrative (plain text, every token supervised)."""
        return {"task": task, "loss": "full", "messages": [], "text": text, "target": target,
                "source": self.writer.source, "item_id": item_id, "user_id": user_id,
                "teacher_model": self.writer.model, "prompt_hash": self.writer.prompt_hash(prompts)}

    async def run(self, jobs: Sequence[Job], width: int, seed: int) -> None:
        """Run every job on ``width`` workers; raises the first fatal :class:`TeacherError`.

        Jobs start in a seeded shuffled order, so a run cut short by its budget has enriched a
        random mix of items and users (outputs keep the job order whatever finishes first).
        """
        progress = Progress(log, "teacher enrichment", total=len(jobs), unit="jobs")
        order = list(jobs)
        random.Random(f"{seed}:job_order").shuffle(order)
        pending = iter(order)
        fatal: list[TeacherError] = []

        async def worker() -> None:
            for job in pending:
                if fatal:
                    return
                try:
                    await (self._item(job) if isinstance(job, ItemJob) else self._user(job))
                except BudgetExhausted:
                    pass  # counted in _step; later jobs may still be answered from the cache
                except TeacherError as exc:
                    fatal.append(exc)
                    return
                progress.update()

        await asyncio.gather(*(worker() for _ in range(max(1, min(width, len(jobs))))))
        progress.close()
        if fatal:
            raise fatal[0]

    def result(self, selected_items: int, selected_users: int) -> EnrichmentResult:
        def ordered(rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
            return [row for _, row in sorted(rows, key=lambda r: r[0])]

        stats = {
            "source": self.writer.source,
            "items": {"selected": selected_items, "narratives": len(self._items)},
            "users": {"selected": selected_users, "reasoning_paths": len(self._reasoning),
                      "narratives": len(self._users)},
            "steps": {step: {"accepted": self.accepted[step], "dropped": self.dropped[step],
                             "skipped_budget": self.skipped_budget[step],
                             "rejections": sum(self.rejections[step].values())} for step in STEPS},
            "rejections": {step: dict(sorted(self.rejections[step].items())) for step in STEPS},
        }
        return EnrichmentResult(ordered(self._items) + ordered(self._users), ordered(self._reasoning),
                                stats, self.review.records())


def build_jobs(catalog: Catalog, item_ids: Sequence[str], samples: Sequence[Sample]) -> list[Job]:
    """Item jobs then user jobs, indexed (the output order)."""
    jobs: list[Job] = [ItemJob(k, catalog.items[i]) for k, i in enumerate(item_ids)]
    base = len(jobs)
    for k, sample in enumerate(samples):
        jobs.append(UserJob(base + k, sample, tuple(catalog.items[i] for i in sample.history),
                            catalog.items[sample.target]))
    return jobs
