"""Output checks, one reason at a time, and the offline writer's output passing them."""

from __future__ import annotations

import asyncio

import pytest

from components.common.artifacts import Catalog, Item, Sample
from components.teacher_corpus import validation as v
from components.teacher_corpus.config import LengthBounds
from components.teacher_corpus.enrich import Enricher, OfflineWriter, Review, build_jobs
from tests.teacher_corpus.helpers import config

A, B, C, T = "<a_1><b_1><c_1>", "<a_1><b_1><c_2>", "<a_2><b_0><c_0>", "<a_3><b_3><c_3>"
CATALOG_SIDS = frozenset({A, B, C, T})
WIDE = LengthBounds(min_chars=10, max_chars=2000)
PAD = " This sentence only pads the text to a reasonable length."


def test_normalize_strips_think_blocks():
    assert v.normalize("<think>\nplanning\n</think>\n\nThe answer.") == "The answer."
    assert v.normalize("cut-off planning</think> The answer.") == "The answer."
    assert v.normalize("  plain  ") == "plain"


@pytest.mark.parametrize("text, reasons", [
    ("", ["empty"]),
    ("short", ["too_short"]),
    ("x" * 2001, ["too_long"]),
    (f"Analysis of a pen.{PAD}", []),
    (f"Analysis mentioning <a_9><b_9><c_9>.{PAD}", ["unknown_sid"]),
    (f"Analysis with a stray token <a_1><c_1>.{PAD}", ["malformed_sid"]),
])
def test_item_analysis(text, reasons):
    assert v.check_item_analysis(text, 3, CATALOG_SIDS, WIDE) == reasons


@pytest.mark.parametrize("text, reasons", [
    (f"{A} is a fine pen. {A} writes well.{PAD}", []),
    (f"This pen writes well.{PAD}", ["missing_own_sid"]),
    (f"{A} is like <a_7><b_7><c_7>.{PAD}", ["unknown_sid"]),
    (f"{A} pairs with {B}.{PAD}", []),
])
def test_item_narrative(text, reasons):
    assert v.check_item_narrative(text, A, 3, CATALOG_SIDS, WIDE) == reasons


def _it(sid: str, title: str, brand: str = "Acme", category: str = "Pens") -> Item:
    return Item(item_id=sid, title=title, description="", brand=brand, categories=("Office", category), sid=sid)


TARGET = _it(T, "Acme Gel Pen, Blue")
HISTORY = [_it(A, "Acme Ballpoint Pen, Black"), _it(B, "Papyra Copy Paper", "Papyra", "Paper")]


@pytest.mark.parametrize("text, reasons", [
    (f"I notice {A} then {B}; I think they like pens.{PAD}", []),
    (f"I notice {A} then {B}; next they buy {T}.{PAD}", ["leaks_target_sid"]),
    (f"I notice {A}; next they buy <A_3><B_3><C_3>.{PAD}", ["leaks_target_sid"]),
    (f"I notice {A}; next they buy a_3 b_3 c_3.{PAD}", ["leaks_target_sid"]),
    (f"I notice {A}; next they buy ＜a_3＞＜b_3＞＜c_3＞.{PAD}", ["leaks_target_sid"]),
    (f"I notice {A}; next they buy the acme GEL-pen, blue!{PAD}", ["leaks_target_title"]),
    (f"I notice {A}; next they buy an Acme gel pen.{PAD}", ["leaks_target_title"]),  # the title minus a word
    (f"I notice {A}; they like pens in blue.{PAD}", []),  # one distinctive word, not the title
    (f"I notice {A}; they like gel pens in blue.{PAD}", ["leaks_target_title"]),  # all its distinctive words
    (f"I notice {A}; so next: pens, for writing, from Acme.{PAD}", []),  # shared brand, generic kind
    (f"I notice {A} and <a_0><b_0><c_0>.{PAD}", ["unknown_sid"]),
])
def test_user_reasoning_leak_check(text, reasons):
    generic = v.generic_words([TARGET, *HISTORY])
    assert v.check_user_reasoning(text, TARGET, HISTORY, 3, CATALOG_SIDS, WIDE, generic) == reasons


@pytest.mark.parametrize("text, reasons", [
    (f"The user bought {A}, {B} and {C}.{PAD} Next: {T}.", []),
    (f"The user bought {A}, {B} and {C}.{PAD} Next: **{T}**", []),
    (f"The user bought {A} and {C}.{PAD} Next: {T}", ["history_not_recited"]),
    (f"The user bought {B}, {A} and {C}.{PAD} Next: {T}", ["history_not_recited"]),
    (f"The user bought {A}, {B}, {C}.{PAD} Next: {T}, a great choice.", ["not_ending_with_target"]),
    (f"The user bought {A}, {B}, {C}.{PAD} Next: {T} rather than {A}", ["not_ending_with_target"]),
])
def test_user_narrative(text, reasons):
    assert v.check_user_narrative(text, [A, B, C], T, 3, CATALOG_SIDS, WIDE) == reasons


def _item(k: int, category: str, brand: str = "Acme", description: str = "Sturdy. Useful for daily work.") -> Item:
    return Item(item_id=f"i{k}", title=f"{brand} {category} number {k}", description=description, brand=brand,
                categories=("Office", category), sid=f"<a_0><b_{k // 8}><c_{k % 8}>")


def test_offline_writer_passes_validation_including_repeat_purchases():
    items = {f"i{k}": _item(k, ["Pens", "Paper", "Labels"][k % 3], brand=["Acme", ""][k % 2],
                            description="" if k % 4 == 0 else "Sturdy. Useful for daily work.")
             for k in range(12)}
    catalog = Catalog(item_ids=tuple(items), sid_of={k: item.sid for k, item in items.items()}, levels=3,
                      tokens=(), sid_space=None, items=items)
    samples = [
        Sample(0, "u1", ("i0",), "i1", 1, "train"),
        Sample(1, "u2", ("i1", "i2", "i3", "i4", "i5"), "i6", 2, "train"),
        Sample(2, "u3", ("i7", "i8", "i7"), "i7", 3, "train"),  # the target was bought before: never named
        Sample(3, "u4", ("i9",), "i9", 4, "train"),
    ]
    enricher = Enricher(OfflineWriter(60), catalog, config().validation, Review(5, 0))
    asyncio.run(enricher.run(build_jobs(catalog, sorted(items), samples), width=1, seed=0))
    result = enricher.result(len(items), len(samples))
    assert result.stats["steps"]["item_narrative"]["accepted"] == 12
    assert result.stats["steps"]["user_reasoning"]["accepted"] == 4
    assert result.stats["steps"]["user_narrative"]["accepted"] == 4
    assert not any(result.stats["rejections"].values())
    reasoning = {r["user_id"]: r for r in result.reasoning_rows}
    assert items["i7"].sid not in reasoning["u3"]["reasoning"] and "a reorder" in reasoning["u3"]["reasoning"]
    assert items["i5"].sid in reasoning["u2"]["reasoning"]  # the latest item, by its SID
    assert {r["source"] for r in result.corpus_rows} == {"offline"}
    assert all(r["teacher_model"] is None for r in result.corpus_rows)
