"""The deterministic alignment tasks (RECIPE.md section 3, groups A and B) as chat rows.

* Group A, one row per item of ``tasks.item_scope``: title -> SID, SID -> title.
* Group B, one row per TRAIN sample (or a seeded subsample): next item in the four combinations
  SID/title history -> SID/title target. ``sid_history_to_sid`` is the main recommendation task
  and uses the shared direct prompt (:func:`components.common.prompts.direct_messages`).

Every row has ``loss="response"``: the training stage puts the loss on the assistant answer only
(the bare SID or title here; it adds the empty think block itself). A phrasing is drawn per row
with a generator seeded by (run seed, task), so a task's rows do not depend on which other tasks
are enabled.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

from components.common.artifacts import Catalog, Sample
from components.common.prompts import DIRECT_SYSTEM, DIRECT_USER, direct_messages
from components.teacher_corpus.config import ChatTemplate, TasksConfig

SOURCE = "template"


def template_hash(system: str | None, user: str) -> str:
    """Short hash of one phrasing (the ``prompt_hash`` of its rows)."""
    return hashlib.sha256(json.dumps([system, user]).encode()).hexdigest()[:16]


DIRECT_HASH = template_hash(DIRECT_SYSTEM, DIRECT_USER)


def chat_row(task: str, messages: list[dict[str, str]], answer: str, *, item_id: str,
             user_id: str | None, prompt_hash: str) -> dict[str, Any]:
    """A corpus row for a chat task: the prompt turns plus the bare answer as the assistant turn."""
    return {"task": task, "loss": "response",
            "messages": [*messages, {"role": "assistant", "content": answer}],
            "text": None, "target": answer, "source": SOURCE, "item_id": item_id, "user_id": user_id,
            "teacher_model": None, "prompt_hash": prompt_hash}


def _render(template: ChatTemplate, **fields: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": template.user.format(**fields)})
    return messages


def _titles(titles: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


def items_in_scope(cfg: TasksConfig, catalog: Catalog, train: Sequence[Sample]) -> list[str]:
    """Item ids of the SID<->title tasks and item-centric enrichment, sorted."""
    if cfg.item_scope == "catalog":
        return sorted(catalog.items)
    seen = {item for sample in train for item in (*sample.history, sample.target)}
    return sorted(seen)


def next_item_samples(cfg: TasksConfig, train: Sequence[Sample], seed: int) -> list[Sample]:
    """The train samples of the next-item tasks: all, or a seeded subsample of ``max_samples``."""
    if cfg.max_samples is None or cfg.max_samples >= len(train):
        return list(train)
    keep = sorted(random.Random(f"{seed}:next_item_samples").sample(range(len(train)), cfg.max_samples))
    return [train[i] for i in keep]


def build_tasks(cfg: TasksConfig, catalog: Catalog, train: Sequence[Sample], seed: int) -> list[dict[str, Any]]:
    """All rows of the enabled deterministic tasks."""
    rows: list[dict[str, Any]] = []
    item_ids = items_in_scope(cfg, catalog, train)
    samples = next_item_samples(cfg, train, seed)
    for task in cfg.enabled:
        rng = random.Random(f"{seed}:{task}")
        phrasings = getattr(cfg.templates, task, None)
        hashes = [template_hash(t.system, t.user) for t in phrasings] if phrasings else None

        def pick() -> tuple[ChatTemplate, str]:
            k = rng.randrange(len(phrasings))
            return phrasings[k], hashes[k]

        if task in ("title_to_sid", "sid_to_title"):
            for item_id in item_ids:
                item = catalog.items[item_id]
                template, h = pick()
                if task == "title_to_sid":
                    rows.append(chat_row(task, _render(template, title=item.title), item.sid,
                                         item_id=item_id, user_id=None, prompt_hash=h))
                else:
                    rows.append(chat_row(task, _render(template, sid=item.sid), item.title,
                                         item_id=item_id, user_id=None, prompt_hash=h))
            continue
        for sample in samples:
            target = catalog.items[sample.target]
            if task == "sid_history_to_sid":
                messages = direct_messages([catalog.sid(h) for h in sample.history])
                rows.append(chat_row(task, messages, target.sid, item_id=sample.target,
                                     user_id=sample.user_id, prompt_hash=DIRECT_HASH))
                continue
            template, h = pick()
            if task.startswith("sid_history"):
                history = ", ".join(catalog.sid(i) for i in sample.history)
            else:
                history = _titles([catalog.items[i].title for i in sample.history])
            answer = target.sid if task.endswith("_to_sid") else target.title
            rows.append(chat_row(task, _render(template, history=history), answer,
                                 item_id=sample.target, user_id=sample.user_id, prompt_hash=h))
    return rows
