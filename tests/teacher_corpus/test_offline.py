"""The offline writer's user-centric reasoning: a short analysis of the history that ends with the
next item's interest, within its word budget, naming history items only by SID and never the
target (SID, title or distinctive words), on the demo catalog and on the real Office pack."""

from __future__ import annotations

import ast
import asyncio
import csv
import json
import random

import numpy as np
import pytest

from components.common import leaks
from components.common.artifacts import Item, Sample
from components.common.sid import TOKEN_RE, find_sids, format_sid
from components.ingest.demo_data import make_items
from components.teacher_corpus import kinds, offline, validation
from components.teacher_corpus.enrich import OfflineWriter, UserJob


def _demo_catalog() -> dict[str, Item]:
    rows = make_items(120, np.random.default_rng(5))
    return {r["asin"]: Item(item_id=r["asin"], title=r["title"], description=" ".join(r["description"]),
                            brand=r["brand"], categories=tuple(r["category"]), sid=format_sid([k // 64, k // 8 % 8, k % 8]))
            for k, r in enumerate(rows) if r["title"] and len(r["title"]) < 200 and "<" not in r["title"]}


def _demo_jobs(n: int = 400) -> list[tuple[Sample, list[Item], Item]]:
    items = _demo_catalog()
    ids = sorted(items)
    rng = random.Random(0)
    jobs = []
    for u in range(n):
        history = [items[rng.choice(ids)] for _ in range(rng.randint(1, 10))]
        target = rng.choice([*history, *(items[rng.choice(ids)] for _ in range(6))])  # some repeat purchases
        jobs.append((Sample(u, f"u{u}", tuple(it.item_id for it in history), target.item_id, u, "train"), history, target))
    return jobs


def _office_jobs(pack) -> list[tuple[Sample, list[Item], Item]]:
    """Every valid-split row of the real pack, its items given enumerated SIDs (the writer needs
    SIDs, not good ones)."""
    raw = json.loads((pack / "item.json").read_text())
    items = {key: Item(item_id=key, title=meta["title"].strip(), description=str(meta.get("description") or ""),
                       brand=str(meta.get("brand") or "").strip(), categories=(),
                       sid=format_sid([k // 1024, k // 32 % 32, k % 32]))
             for k, (key, meta) in enumerate(raw.items())}
    jobs = []
    with open(pack / "valid.csv", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            history = [items[str(h)] for h in ast.literal_eval(row["history_item_id"])]
            jobs.append((Sample(i, row["user_id"], tuple(it.item_id for it in history), row["item_id"], i, "train"), history,
                         items[row["item_id"]]))
    return jobs


def _check_path(sample: Sample, history: list[Item], target: Item, max_words: int,
                followers: offline.KindFollowers | None = None, interest_kinds: int = 1) -> str:
    named = followers.interest(history, target, interest_kinds) if followers else ()
    text = offline.user_reasoning(sample, history, target, max_words, named)
    assert offline.count_words(text) <= max_words, text
    assert validation.target_leaks(text, target, history, validation.generic_words([*history, target])) == [], text
    # history items only by their SIDs: SIDs of the history, never the target's; never a history title
    assert set(find_sids(text, 3)) <= {it.sid for it in history} - {target.sid}, text
    assert not any(it.title in text for it in history), text
    # none of the target's distinctive words (title words the history does not share, not generic)
    # (the titles of the history's other items are shared; the brands of all of them may be named)
    allowed = validation.generic_words([*history, target]) | {w for it in history for w in leaks.words(it.brand)}
    distinctive = leaks.distinctive_words(target.title, [it.title for it in history if it.sid != target.sid],
                                          allowed)
    assert not distinctive & set(leaks.words(TOKEN_RE.sub(" ", text))), (text, distinctive)
    # it ends with the interest the next item serves
    aim = offline.item_kind(target)
    summary = text.rsplit("So next: ", 1)[-1]
    if len(named) > 1:  # the kinds, in the ranking's order, the target's among them; no purpose
        assert aim.label in named and text.count("So next: ") == 1, text
        assert summary.startswith(", ".join(named[:-1]) + f" or {named[-1]}") and " for " not in summary, text
        return text
    assert text.count("So next: ") == 1 and summary.startswith(aim.label), text
    if aim.purpose:
        assert f"for {aim.purpose}" in summary
    return text


@pytest.mark.parametrize("max_words", [16, 24, 32, 60])
def test_demo_paths_fit_the_budget_and_never_name_the_target(max_words):
    texts = [_check_path(*job, max_words) for job in _demo_jobs()]
    assert len(set(texts)) > len(texts) // 3  # analyses, not one sentence for everyone
    if max_words >= 32:  # room for the whole analysis of a long history
        assert any("Shift:" in t and "Latest:" in t and ("recurs" in t or "Brands vary" in t) for t in texts)


@pytest.mark.parametrize("max_words", [16, 32])
@pytest.mark.parametrize("interest_kinds", [2, 3])
def test_demo_paths_naming_several_kinds_fit_the_budget_and_never_name_the_target(max_words, interest_kinds):
    jobs = _demo_jobs()
    followers = offline.KindFollowers.from_train([job[0] for job in jobs], _demo_catalog())
    texts = [_check_path(*job, max_words, followers, interest_kinds) for job in jobs]
    assert all(t.rsplit("So next: ", 1)[-1].count(",") + 1 >= interest_kinds - 1 for t in texts)
    assert len({t.rsplit("So next: ", 1)[-1] for t in texts}) > 10


def _shop() -> dict[str, Item]:
    rows = [("pen", "Acme Gel Pen", "Pens"), ("pen2", "Inkwell Ballpoint Pen", "Pens"),
            ("paper", "Papyra Copy Paper", "Paper"), ("label", "Acme Address Labels", "Labels"),
            ("binder", "Bixby Ring Binder", "Binders"), ("toner", "Corvid Toner Cartridge", "Ink & Toner")]
    return {key: Item(key, title, "", title.split()[0], ("Office", cat), format_sid([0, 0, k]))
            for k, (key, title, cat) in enumerate(rows)}


def _train(items: dict[str, Item], pairs: list[tuple[str, str]]) -> list[Sample]:
    return [Sample(k, f"u{k}", (a,), b, k, "train") for k, (a, b) in enumerate(pairs)]


def test_kind_followers_rank_by_the_latest_item_leaving_a_sample_out():
    items = _shop()
    # after pens: paper 5 times, labels 3 times, binders once; after paper: ink & toner 4 times
    train = _train(items, [("pen", "paper")] * 5 + [("pen2", "label")] * 3 + [("pen", "binder")]
                   + [("paper", "toner")] * 4)
    followers = offline.KindFollowers.from_train(train, items)
    pen, pen2, paper = items["pen"], items["pen2"], items["paper"]
    assert followers.ranked([pen])[:3] == ["paper", "labels", "binders"]
    # the latest item decides; an earlier one breaks its ties
    assert followers.ranked([pen, paper])[0] == "ink & toner"
    assert followers.ranked([paper, pen])[:2] == ["paper", "labels"]
    # a train sample's own transition is left out: the one pens -> binders row does not rank binders
    # above kinds that never followed pens (only the popularity of the rest orders those)
    assert followers.ranked([pen], items["binder"]).index("binders") > followers.ranked([pen]).index("binders")
    # the interest: the target's kind and the likeliest others, in the ranking's order, whatever the target
    # (unless leaving the sample out reorders close counts: then it is what an unseen row would see)
    assert followers.interest([pen2], items["label"], 2) == ("paper", "labels")
    assert followers.interest([pen2], items["paper"], 2) == ("paper", "labels")
    assert followers.interest([pen2], items["toner"], 2) == ("paper", "ink & toner")
    assert followers.interest([pen2], items["label"], 3) == ("paper", "labels", "binders")


def test_an_interest_of_several_kinds_does_not_tell_which_is_next():
    items = _shop()
    train = _train(items, [("pen", "paper")] * 5 + [("pen2", "label")] * 3 + [("paper", "toner")])
    followers = offline.KindFollowers.from_train(train, items)
    history = [items["binder"], items["pen2"]]
    sample = Sample(0, "u", ("binder", "pen2"), "", 0, "train")
    texts = {target: offline.user_reasoning(sample, history, items[target], 60,
                                            followers.interest(history, items[target], 2))
             for target in ("label", "paper")}
    assert texts["label"] == texts["paper"] == (
        "A mix: pens, binders. Latest: <a_0><b_0><c_1>, pens. Brands vary. So next: paper or labels, a new brand.")
    # a repeat purchase says so, as with one kind
    texts = [offline.user_reasoning(sample, history, items[t], 60, followers.interest(history, items[t], 2))
             for t in ("pen2", "label")]
    assert texts[0].endswith(", a reorder.") and not texts[1].endswith(", a reorder.")
    with pytest.raises(ValueError, match="kind transitions"):
        OfflineWriter(32, 2)


def test_the_narrative_names_the_kind_bought_while_the_reasoning_hedges():
    items = _shop()
    followers = offline.KindFollowers.from_train(_train(items, [("pen", "paper")] * 5 + [("pen2", "label")] * 3), items)
    job = UserJob(0, Sample(0, "u", ("binder", "pen2"), "label", 0, "train"), (items["binder"], items["pen2"]),
                  items["label"])
    writer = OfflineWriter(60, 2, followers)
    reasoning = asyncio.run(writer.write("user_reasoning", job, None, 0))
    narrative = asyncio.run(writer.write("user_narrative", job, reasoning, 0))
    assert reasoning.endswith("So next: paper or labels, a new brand.")
    # told in hindsight: the narrative ends with the label's SID and restates the one-kind path
    single = offline.user_reasoning(job.sample, job.history, job.target, 60)
    assert single.endswith("So next: labels, for labeling, a new brand.")
    assert narrative == offline.user_narrative(job.sample, job.history, job.target, single)
    assert narrative == asyncio.run(OfflineWriter(60).write("user_narrative", job, single, 0))


def test_office_paths_fit_the_budget_and_never_name_the_target(office_pack):
    jobs = _office_jobs(office_pack)
    assert len(jobs) > 4000
    texts = [_check_path(*job, 32) for job in jobs]
    kinds_named = {t.rsplit("So next: ", 1)[-1].split(",")[0].rstrip(".") for t in texts}
    assert len(kinds_named) >= 20  # the kind vocabulary, read from real titles
    assert sum(kinds.OTHER in t.rsplit("So next: ", 1)[-1] for t in texts) < 0.1 * len(texts)


def test_brand_clause_follows_the_history():
    pen = Item("p", "Acme Gel Pen, Blue", "", "Acme", ("Office", "Pens"), "<a_0><b_0><c_1>")
    paper = Item("q", "Papyra Copy Paper", "", "Papyra", ("Office", "Paper"), "<a_0><b_0><c_2>")
    other = Item("r", "Inkwell Ballpoint Pen", "", "Inkwell", ("Office", "Pens"), "<a_0><b_0><c_3>")
    label = Item("s", "Acme Address Labels", "", "Acme", ("Office", "Labels"), "<a_0><b_0><c_4>")
    sample = Sample(0, "u", (), "", 0, "train")
    assert offline.user_reasoning(sample, [pen, paper], label, 60).endswith("So next: labels, for labeling, from Acme.")
    assert offline.user_reasoning(sample, [paper, label], other, 60).endswith("So next: pens, for writing, a new brand.")
    assert offline.user_reasoning(sample, [pen, paper], pen, 60).endswith("So next: pens, for writing, a reorder.")
    text = offline.user_reasoning(sample, [other, pen, paper], label, 60)
    assert text == ("Mainly pens, also paper. Latest: <a_0><b_0><c_2>, paper. Brands vary. Shift: pens to paper. "
                    "So next: labels, for labeling, from Acme.")
    assert offline.user_reasoning(sample, [other, pen, paper], label, 60) == text  # deterministic
    # the budget drops the least useful sentences first (shift, brands, opening), the summary last
    assert offline.user_reasoning(sample, [other, pen, paper], label, 16) == (
        "Mainly pens, also paper. Latest: <a_0><b_0><c_2>, paper. So next: labels, for labeling, from Acme.")
    assert offline.user_reasoning(sample, [other, pen, paper], label, 12) == (
        "Latest: <a_0><b_0><c_2>, paper. So next: labels, for labeling, from Acme.")
    assert offline.user_reasoning(sample, [other, pen, paper], label, 5) == "So next: labels, for labeling."


def test_user_narrative_weaves_in_the_reasoning():
    pen = Item("p", "Acme Gel Pen", "", "Acme", ("Office", "Pens"), "<a_0><b_0><c_1>")
    paper = Item("q", "Papyra Copy Paper", "", "Papyra", ("Office", "Paper"), "<a_0><b_0><c_2>")
    sample = Sample(0, "u", ("p", "q"), "p", 0, "train")
    reasoning = offline.user_reasoning(sample, [pen, paper], pen, 60)
    text = offline.user_narrative(sample, [pen, paper], pen, reasoning)
    assert text == (f"This user interacted with <a_0><b_0><c_1> and then <a_0><b_0><c_2>, in that order. {reasoning} "
                    "After <a_0><b_0><c_2>, the item they chose next was <a_0><b_0><c_1>")


@pytest.mark.parametrize("title, categories, label, purpose", [
    ("Paper Mate InkJoy Gel Pens, Fine Point, Dark Blue, 12 Count", (), "pens", "writing"),
    ("HP 74 Black & 75 Tri-color Original Ink Cartridges, 2 Cartridges (CB335WN, CB337WN)", (), "ink & toner",
     "printing"),
    ("Scotch Double Sided Tape with Dispenser, Narrow Width", (), "tape & glue", "sticking"),
    ("Insten Premium Leather Mouse Pad with Waterproof Coating", (), "electronics", "computing"),
    ("Brother MFC-J480DW - Wireless Inkjet Color All-in-One Printer w Auto Document Feeder", (), "printers",
     "printing"),
    ("Knock Knock Seriously? Sticky Notes", (), "notebooks", "note taking"),
    ("Trojan Ultra Ribbed", (), kinds.OTHER, None),
    ("Aurora Fine Point Gel Pen, Smooth Ink, 5-Pack (Model AU1000)", ("Office Products", "Pens"), "pens", "writing"),
    ("Bixby High Yield Toner Cartridge, Black", ("Office Products", "Ink & Toner"), "ink & toner", "printing"),
    ("Corvid Mesh File Tray, Bamboo", ("Office Products", "Desk Organizers"), "desk organizers", "organizing"),
])
def test_kinds(title, categories, label, purpose):
    assert kinds.kind_of(title, categories) == kinds.Kind(label, purpose)
