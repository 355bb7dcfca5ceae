"""Deterministic tasks: the recipe's six tasks, from the TRAIN split only (an invariant)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from components.common.artifacts import read_catalog
from components.common.prompts import direct_messages
from components.common.sid import find_sids
from components.teacher_corpus.data import read_train_samples
from components.teacher_corpus.stage import run
from components.teacher_corpus.tasks import build_tasks
from tests.teacher_corpus.helpers import (
    RecordingTracker,
    config,
    context,
    outputs,
    toy_samples,
    write_inputs,
)

HELD_OUT = ("i12", "i13")  # targets of valid/test samples only; no train sample mentions them
NEXT_ITEM = ("sid_history_to_sid", "sid_history_to_title", "title_history_to_sid", "title_history_to_title")


def _load(tmp_path, **kwargs):
    paths = write_inputs(tmp_path / "in", **kwargs)
    catalog = read_catalog(paths["sid_map"], paths["items"])
    train, _ = read_train_samples(paths["samples"], catalog)
    return paths, catalog, train


def _run_stage(tmp_path, **section):
    paths = write_inputs(tmp_path / "in")
    out = outputs(tmp_path / "out")
    run(config(**section), context(tmp_path), paths, out, RecordingTracker())
    return pq.read_table(out["corpus"]).to_pylist(), pq.read_table(out["reasoning"]).to_pylist()


@pytest.mark.parametrize("scope", ["catalog", "train"])
def test_no_valid_or_test_sample_reaches_the_corpus(tmp_path, scope):
    corpus, reasoning = _run_stage(tmp_path, tasks={"item_scope": scope}, teacher={"backend": "offline"})
    catalog = read_catalog(str(tmp_path / "in/sid_map.parquet"), str(tmp_path / "in/items.parquet"))
    held_sids = {catalog.sid(i) for i in HELD_OUT}
    train = {(u, tuple(h), t) for u, h, t, _, split in toy_samples() if split == "train"}
    train_targets = {t for _, _, t in train}

    next_item = [r for r in corpus if r["task"] in NEXT_ITEM]
    assert next_item and {r["task"] for r in next_item} == set(NEXT_ITEM)
    for row in next_item + [r for r in corpus if r["task"] == "user_narrative"]:
        assert row["item_id"] in train_targets and row["item_id"] not in HELD_OUT
        assert row["target"] not in held_sids
    for row in reasoning:
        key = (row["user_id"], tuple(row["history_item_ids"]), row["target_item_id"])
        assert key in train, f"reasoning row {key} is not a train sample"
    # the direct task's rows are exactly the train samples, prompt from components.common.prompts
    direct = [r for r in corpus if r["task"] == "sid_history_to_sid"]
    assert len(direct) == len(train)
    for row in direct:
        history_sids = find_sids(row["messages"][1]["content"], catalog.levels)
        assert row["messages"][:2] == direct_messages(history_sids)
        assert catalog.sid(row["item_id"]) == row["target"]

    everything = " ".join(str(v) for r in corpus + reasoning for v in r.values())
    if scope == "train":  # held-out items are unknown to a train-scoped corpus
        assert not held_sids & set(find_sids(everything, catalog.levels))
    else:  # the catalog tasks know every item's title and SID, as in the recipe
        assert {r["item_id"] for r in corpus if r["task"] == "title_to_sid"} == set(catalog.items)


def test_rows_follow_the_contract(tmp_path):
    paths, catalog, train = _load(tmp_path)
    rows = build_tasks(config().tasks, catalog, train, seed=1)
    for row in rows:
        assert row["loss"] == "response" and row["source"] == "template" and row["text"] is None
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][-1]["content"] == row["target"]  # the bare answer
        assert row["teacher_model"] is None and len(row["prompt_hash"]) == 16
        if row["task"] in ("title_to_sid", "sid_to_title"):
            assert row["user_id"] is None
        else:
            assert row["user_id"] is not None
        answer_is_sid = row["task"].endswith("_to_sid")
        item = catalog.items[row["item_id"]]
        assert row["target"] == (item.sid if answer_is_sid else item.title)
    by_task = {t: [r for r in rows if r["task"] == t] for t in {r["task"] for r in rows}}
    assert len(by_task["title_to_sid"]) == len(catalog.items) == 14
    assert all(len(by_task[t]) == len(train) for t in NEXT_ITEM)
    title_row = by_task["title_history_to_sid"][0]
    assert '"' + catalog.items[train[0].history[0]].title + '"' in title_row["messages"][1]["content"]


def test_phrasings_are_drawn_per_row_and_seeded(tmp_path):
    paths, catalog, train = _load(tmp_path, samples=toy_samples(n_users=30))
    cfg = config().tasks
    first = build_tasks(cfg, catalog, train, seed=1)
    assert first == build_tasks(cfg, catalog, train, seed=1)
    phrasings = {r["prompt_hash"] for r in first if r["task"] == "title_history_to_title"}
    assert len(phrasings) > 5  # 11 phrasings over 120 rows
    only_a = build_tasks(config(tasks={"enabled": ["title_history_to_title"]}).tasks, catalog, train, seed=1)
    assert only_a == [r for r in first if r["task"] == "title_history_to_title"]


def test_max_samples_subsamples_the_next_item_tasks(tmp_path):
    paths, catalog, train = _load(tmp_path)
    rows = build_tasks(config(tasks={"max_samples": 5}).tasks, catalog, train, seed=1)
    for task in NEXT_ITEM:
        assert len([r for r in rows if r["task"] == task]) == 5
    assert len([r for r in rows if r["task"] == "title_to_sid"]) == 14


def test_retired_items_never_enter_the_corpus(tmp_path):
    corpus_dir = tmp_path / "in"
    paths = write_inputs(corpus_dir, statuses={"i3": "retired"})
    out = outputs(tmp_path / "out")
    tracker = RecordingTracker()
    run(config(teacher={"backend": "offline"}), context(tmp_path), paths, out, tracker)
    corpus = pq.read_table(out["corpus"]).to_pylist()
    retired_sid = "<a_0><b_0><c_3>"
    assert all(retired_sid not in str(r) for r in corpus)
    stats = tracker.dicts["teacher_corpus_stats.json"]
    assert stats["inputs"]["train_dropped_retired_item"] > 0
    assert stats["inputs"]["retired_items"] == 1
