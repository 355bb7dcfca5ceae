"""Checks every teacher output passes before it enters the corpus.

Each check returns the reasons an output is rejected (empty: accepted). Reasons are stable
names, counted per step in the stage's stats:

* ``empty``, ``too_short``, ``too_long``: length bounds (after stripping a ``<think>`` part);
* ``unknown_sid``: a SID that names no catalog item (an invented or retired SID);
* ``malformed_sid``: a SID token outside a complete SID (e.g. ``<a_3><c_9>``);
* ``missing_own_sid``: an item narrative that never names its item's SID;
* ``leaks_target_sid``, ``leaks_target_title``: a reasoning path that reveals the answer, in any
  spelling (:mod:`components.common.leaks`: SIDs normalised, near-identical titles);
* ``history_not_recited``: a user narrative that does not recite the history SIDs in order;
* ``not_ending_with_target``: a user narrative whose last words are not the target SID.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from components.common import leaks
from components.common.artifacts import Item
from components.common.prompts import THINK_CLOSE, THINK_OPEN
from components.common.sid import TOKEN_RE, find_sids
from components.teacher_corpus import kinds
from components.teacher_corpus.config import LengthBounds

_THINK = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.S)
#: What may follow the final SID of a user narrative: punctuation, quotes, markdown, spaces.
_TAIL = re.compile(r"[\s.,;:!?\"'`*_)\]]*")


def normalize(text: str) -> str:
    """Drop a reasoning model's ``<think>...</think>`` part (the recipe strips it) and trim."""
    text = _THINK.sub("", text)
    if THINK_CLOSE in text:  # an unterminated opening was cut by the provider
        text = text.split(THINK_CLOSE, 1)[1]
    return text.strip()


def _length(text: str, bounds: LengthBounds) -> list[str]:
    if not text:
        return ["empty"]
    if len(text) < bounds.min_chars:
        return ["too_short"]
    if len(text) > bounds.max_chars:
        return ["too_long"]
    return []


def _sids(text: str, levels: int, catalog_sids: frozenset[str]) -> tuple[list[str], list[str]]:
    """(the complete SIDs in ``text``, the reasons they are bad)."""
    found = find_sids(text, levels)
    reasons = []
    if any(sid not in catalog_sids for sid in found):
        reasons.append("unknown_sid")
    if len(TOKEN_RE.findall(text)) != levels * len(found):
        reasons.append("malformed_sid")
    return found, reasons


def generic_words(items: Iterable[Item]) -> frozenset[str]:
    """Words a reasoning path may use whatever the target: the catalog's category words and the
    product-kind vocabulary of :mod:`.kinds`."""
    return kinds.vocabulary([category for item in items for category in item.categories])


def target_leaks(text: str, target: Item, history: Sequence[Item], generic: frozenset[str]) -> list[str]:
    """How ``text`` reveals ``target``: its SID in any spelling, its title or a near-identical
    one. What the history shares with the target (its other items' titles and brands) and
    ``generic`` words are not the target's; the target bought before shares nothing (naming it
    names the answer)."""
    reasons = []
    if leaks.names_sid(text, target.sid):
        reasons.append("leaks_target_sid")
    others = [it for it in history if it.sid != target.sid]
    brands = {w for it in others for w in leaks.words(it.brand)}
    if leaks.names_title(text, target.title, [it.title for it in others], generic | brands):
        reasons.append("leaks_target_title")
    return reasons


def check_item_analysis(text: str, levels: int, catalog_sids: frozenset[str], bounds: LengthBounds) -> list[str]:
    return _length(text, bounds) + _sids(text, levels, catalog_sids)[1]


def check_item_narrative(text: str, sid: str, levels: int, catalog_sids: frozenset[str],
                         bounds: LengthBounds) -> list[str]:
    found, reasons = _sids(text, levels, catalog_sids)
    if sid not in found:
        reasons.append("missing_own_sid")
    return _length(text, bounds) + reasons


def check_user_reasoning(text: str, target: Item, history: Sequence[Item], levels: int,
                         catalog_sids: frozenset[str], bounds: LengthBounds, generic: frozenset[str]) -> list[str]:
    return _length(text, bounds) + _sids(text, levels, catalog_sids)[1] + target_leaks(text, target, history, generic)


def _is_subsequence(needle: Sequence[str], haystack: Sequence[str]) -> bool:
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)


def check_user_narrative(text: str, history_sids: Sequence[str], target_sid: str, levels: int,
                         catalog_sids: frozenset[str], bounds: LengthBounds) -> list[str]:
    found, reasons = _sids(text, levels, catalog_sids)
    if not _is_subsequence(history_sids, found):
        reasons.append("history_not_recited")
    end = text.rfind(target_sid)
    if not found or found[-1] != target_sid or end < 0 or not _TAIL.fullmatch(text[end + len(target_sid):]):
        reasons.append("not_ending_with_target")
    return _length(text, bounds) + reasons
