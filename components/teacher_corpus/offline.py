"""The offline writer: deterministic enrichment text from item metadata and histories.

For runs without any API (the demo, CI). It follows the same two steps and the same rules as
the teacher prompts (the narrative names the item only by its SID; the reasoning path never
mentions the target; the user narrative recites the history and ends with the target SID), so
the same validation accepts its output. What it writes is assembled from the catalog's own
fields (title, brand, categories, description) with a few phrasings chosen by a hash of the
item or user id: it restates metadata and infers nothing a model would. Its rows carry
``source="offline"`` and no teacher model.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence

from components.common.artifacts import Item, Sample

VERSION = "offline-v1"

_STOPWORDS = frozenset(
    "a an and are as at by for from in into is it of on or the to with without this that these those "
    "pack set pcs count inch inches x new".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]{2,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _pick(key: str, options: Sequence[str]) -> str:
    """A phrasing chosen by a stable hash of ``key`` (no global random state)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(options)]


def keywords(item: Item, limit: int = 8) -> list[str]:
    """Distinct lower-case words of the title and categories, stopwords removed."""
    seen: list[str] = []
    for word in _WORD.findall(" ".join([item.title, *item.categories])):
        word = word.lower()
        if word not in _STOPWORDS and word not in seen:
            seen.append(word)
    return seen[:limit]


def excerpt(description: str, max_chars: int = 300) -> str:
    """The first sentences of a description, at most ``max_chars``."""
    out = ""
    for sentence in _SENTENCE.split(description.strip()):
        if out and len(out) + len(sentence) + 1 > max_chars:
            break
        out = f"{out} {sentence}".strip()
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0] + "..."
    if out and out[-1] not in ".!?":
        out += "."
    return out


def _kind(item: Item) -> str:
    return item.category.lower() if item.category else "product"


def _maker(item: Item) -> str:
    return f" by {item.brand}" if item.brand else ""


def item_analysis(item: Item) -> str:
    """Step 1: the five-part analysis, restated from the item's fields."""
    kind, words = _kind(item), keywords(item)
    path = " > ".join(item.categories) if item.categories else "uncategorised"
    features = [w for w in words if w not in {c.lower() for c in item.categories}][:5] or words[:3]
    lines = [
        f"Description: {item.title} is a {kind} item{_maker(item)}, listed under {path}. "
        + (excerpt(item.description) or "The listing gives no further description."),
        f"Use cases: everyday {kind} needs; replacing or adding to related {kind} supplies.",
        f"Target audience: shoppers who need {kind}" + (f" and buyers of {item.brand} products." if item.brand else "."),
        "Key features: " + (", ".join(features) if features else kind) + ".",
        "Keywords: " + ", ".join(words or [kind]) + ".",
    ]
    return "\n".join(lines)


def item_narrative(item: Item) -> str:
    """Step 2: a paragraph naming the item only by its SID."""
    sid, kind, words = item.sid, _kind(item), keywords(item)
    key = item.item_id
    sentences = [
        _pick(key + "open", [f"{sid} is a {kind} item{_maker(item)}.", f"Meet {sid}, a {kind} item{_maker(item)}.",
                             f"{sid} belongs to the {kind} range{_maker(item)}."]),
    ]
    if item.categories:
        sentences.append(f"In the catalog, {sid} is found under {' > '.join(item.categories)}.")
    summary = excerpt(item.description, 240)
    if summary:
        sentences.append(_pick(key + "desc", [f"Its listing says: {summary}", f"As its listing puts it: {summary}"]))
    if words:
        sentences.append(f"Shoppers searching for {', '.join(words[:3])} are likely to come across {sid}.")
    sentences.append(_pick(key + "use", [
        f"{sid} suits anyone who needs dependable {kind}.",
        f"People who use {kind} every day will find {sid} a practical choice.",
    ]))
    if item.brand:
        sentences.append(f"Buyers who trust {item.brand} often pick {sid}.")
    sentences.append(f"In short, {sid} is a {kind} option worth considering.")
    return " ".join(sentences)


def user_reasoning(sample: Sample, history: Sequence[Item], target: Item) -> str:
    """Step 1: a first-person reasoning path over the history; never names the target.

    History items equal to the target (repeat purchases) are not mentioned: naming them would
    reveal the answer.
    """
    key = f"{sample.user_id}:{sample.timestamp}"
    shown = [item for item in history if item.sid != target.sid]
    n = len(history)
    parts = [_pick(key + "open", [f"I am looking at {n} item{'s' if n > 1 else ''} this user interacted with, oldest first.",
                                  f"Let me go through the {n} item{'s' if n > 1 else ''} in this user's history in order."])]
    for k, item in enumerate(shown):
        lead = "First" if k == 0 else ("Most recently" if k == len(shown) - 1 else "Then")
        parts.append(f"{lead} comes {item.sid}, a {_kind(item)} item{_maker(item)}.")
    categories = Counter(_kind(item) for item in history)
    top, top_n = categories.most_common(1)[0]
    if len(categories) == 1:
        parts.append(f"Every item here is in {top}, so I think this user is focused on {top}.")
    else:
        parts.append(f"I notice the items span {', '.join(sorted(categories))}; {top} comes up most "
                     f"({top_n} of {n}).")
    brands = Counter(item.brand for item in history if item.brand)
    if brands and brands.most_common(1)[0][1] > 1:
        brand, times = brands.most_common(1)[0]
        parts.append(f"The brand {brand} appears {times} times, so I think brand matters to this user.")
    if n >= 4 and _kind(history[0]) != _kind(history[-1]):
        parts.append(f"Over time their attention moves from {_kind(history[0])} to {_kind(history[-1])}.")
    if shown:
        parts.append(f"Since the latest item I can discuss is {shown[-1].sid}, their current need is probably "
                     f"around {_kind(shown[-1])} or something that goes with it.")
    parts.append(f"In summary, this user is interested in {', '.join(sorted(categories))} and will likely "
                 "want something that complements what they already have.")
    return " ".join(parts)


def user_narrative(sample: Sample, history: Sequence[Item], target: Item, reasoning: str) -> str:
    """Step 2: recite the history SIDs, restate the reasoning's summary, end with the target SID."""
    sids = [item.sid for item in history]
    recital = sids[0] if len(sids) == 1 else ", ".join(sids[:-1]) + f" and then {sids[-1]}"
    summary = _SENTENCE.split(reasoning.strip())[-1]
    return (f"This user interacted with {recital}, in that order. {summary} "
            f"After {sids[-1]}, the item they chose next was {target.sid}")
