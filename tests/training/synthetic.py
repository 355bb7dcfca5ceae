"""Small synthetic inputs of the training stages, written per the artifact contracts.

The catalog has ``n_items`` items with unique 3-level SIDs; every user walks the catalog in
order (the next item is the one after the last), so "next SID" is learnable by a tiny model.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from components.common import prompts, sid, storage

N_ITEMS = 16


def item_codes(i: int) -> list[int]:
    return [i // 8, (i // 2) % 4, i % 2]


def item_sid(i: int) -> str:
    return sid.format_sid(item_codes(i))


def write_synthetic(out: Path, n_items: int = N_ITEMS, n_users: int = 12, history: int = 3) -> dict[str, str]:
    """Write items, samples, sid_map, corpus and reasoning Parquet files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    titles = [f"Blue pen model {i}" if i % 2 else f"Red stapler series {i}" for i in range(n_items)]
    items = pa.table({
        "item_id": [f"I{i}" for i in range(n_items)], "title": titles,
        "description": [f"A useful office product number {i}." for i in range(n_items)],
        "brand": ["Acme"] * n_items, "categories": [["Office", "Supplies"]] * n_items,
    })
    sid_map = pa.table({
        "item_id": [f"I{i}" for i in range(n_items)],
        "codes": pa.array([item_codes(i) for i in range(n_items)], pa.list_(pa.int32())),
        "sid": [item_sid(i) for i in range(n_items)],
        "status": ["active"] * n_items,
    })
    samples, t = [], 0
    for u in range(n_users):
        start = (3 * u) % n_items
        seq = [(start + k) % n_items for k in range(history + 1)]
        t += 1
        samples.append({"user_id": f"U{u}", "history": [f"I{i}" for i in seq[:-1]], "target": f"I{seq[-1]}",
                        "timestamp": t})
    cut_train, cut_valid = int(0.7 * len(samples)), int(0.85 * len(samples))
    for k, row in enumerate(samples):
        row["split"] = "train" if k < cut_train else "valid" if k < cut_valid else "test"
    corpus = []

    def chat(task, messages, answer, target):
        corpus.append({"task": task, "loss": "response", "text": None, "target": target,
                       "messages": [*messages, {"role": "assistant", "content": answer}]})

    for i in range(n_items):
        chat("title2sid", [{"role": "user", "content": f"Which item has the title: {titles[i]}?"}],
             item_sid(i), item_sid(i))
        chat("sid2title", [{"role": "user", "content": f'What is the title of item "{item_sid(i)}"?'}],
             titles[i], titles[i])
        corpus.append({"task": "item_narrative", "loss": "full", "messages": [], "target": None,
                       "text": f"{item_sid(i)} is a {titles[i].lower()} loved by office workers."})
    for row in samples:
        if row["split"] != "train":
            continue
        hist = [item_sid(int(x[1:])) for x in row["history"]]
        target = item_sid(int(row["target"][1:]))
        chat("sid2sid", prompts.direct_messages(hist), target, target)
    for row in corpus:
        row.update(source="template", item_id=None, user_id=None, teacher_model=None, prompt_hash=None)
    reasoning = []
    for row in samples:
        if row["split"] != "train":
            continue
        hist_idx = [int(x[1:]) for x in row["history"]]
        reasoning.append({
            "user_id": row["user_id"], "history_item_ids": row["history"],
            "history_sids": [item_sid(i) for i in hist_idx],
            "reasoning": f"I bought {item_sid(hist_idx[-1])} last, so I want the next one in the series.",
            "target_item_id": row["target"], "target_sid": item_sid(int(row["target"][1:])),
            "source": "offline",
        })
    paths = {name: str(out / f"{name}.parquet") for name in ("items", "samples", "sid_map", "corpus", "reasoning")}
    storage.write_parquet(items, paths["items"])
    storage.write_parquet(sid_map, paths["sid_map"])
    storage.write_parquet(pa.Table.from_pylist(samples), paths["samples"])
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    corpus_schema = pa.schema([("task", pa.string()), ("loss", pa.string()), ("messages", pa.list_(message)),
                               ("text", pa.string()), ("target", pa.string()), ("source", pa.string()),
                               ("item_id", pa.string()), ("user_id", pa.string()),
                               ("teacher_model", pa.string()), ("prompt_hash", pa.string())])
    storage.write_parquet(pa.Table.from_pylist(corpus, schema=corpus_schema), paths["corpus"])
    storage.write_parquet(pa.Table.from_pylist(reasoning), paths["reasoning"])
    return paths


def write_reasoning(path: Path, n: int, targets: list[int], seed: int = 0) -> str:
    """A reasoning Parquet whose reasoning is just "ok": a format a tiny model learns fast.

    Each row's target is drawn from ``targets`` (item indices); histories are random.
    """
    import random

    rng = random.Random(seed)
    rows = []
    for k in range(n):
        history = [rng.randrange(N_ITEMS) for _ in range(2)]
        target = rng.choice(targets)
        rows.append({"user_id": f"U{k}", "history_item_ids": [f"I{i}" for i in history],
                     "history_sids": [item_sid(i) for i in history], "reasoning": "ok",
                     "target_item_id": f"I{target}", "target_sid": item_sid(target), "source": "offline"})
    storage.write_parquet(pa.Table.from_pylist(rows), path)
    return str(path)
