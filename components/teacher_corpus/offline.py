"""The offline writer: deterministic enrichment text from item metadata and histories.

For runs without any API (the demo, CI, the CPU profiles). It follows the same two steps and the
same rules as the teacher prompts, so the same validation accepts its output:

* item-centric: an analysis restated from the item's fields, then a paragraph that names the
  item only by its SID and links it to its kind and purpose (:mod:`.kinds`);
* user-centric, step 1 (the reasoning path): what the paper's teacher writes, in small: a short
  analysis of the history in the vocabulary of :mod:`.kinds` (the dominant and the latest
  interest, a recurring brand, how the interest shifts) that ends with the interest the next
  item serves ("So next: labels, for labeling, from Avery."). With ``enrichment.interest_kinds``
  above 1 the interest names that many kinds, the next item's and the ones most likely to follow
  the history by the train split's kind transitions, in that rule's order (so neither the order
  nor the list tells which kind the next item is; :class:`KindFollowers`): "So next: binders or
  labels, from Avery." A model that learns it hedges its guess of the interest in its reasoning
  instead of staking every SID of its answer on one kind (the narrative of step 2, told in
  hindsight, keeps the path that names the kind bought). Like the paper's teacher it sees
  the next item for guidance only: it uses that item's kind, purpose and whether its brand is
  one the history already has, never its title, SID or distinctive words; it names history
  items only by their SIDs. Its length is ``enrichment.reasoning_max_words``; every path is
  checked with the stage's own leak detector before it is returned;
* user-centric, step 2: recites the history SIDs, restates the reasoning's summary, ends with
  the target SID.

Phrasings are chosen by a hash of the item or user id (no global random state). Rows carry
``source="offline"`` and no teacher model.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.common.artifacts import Item, Sample
from components.common.sid import TOKEN_RE
from components.teacher_corpus import kinds, validation

VERSION = "offline-v2"

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


def item_kind(item: Item) -> kinds.Kind:
    """The item's kind and purpose (:func:`kinds.kind_of`)."""
    return kinds.kind_of(item.title, item.categories, item.description)


def _maker(item: Item) -> str:
    return f" by {item.brand}" if item.brand else ""


def item_analysis(item: Item) -> str:
    """Step 1: the five-part analysis, restated from the item's fields."""
    kind, words = item_kind(item).label, keywords(item)
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
    sid, words, aim = item.sid, keywords(item), item_kind(item)
    kind = aim.label
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
    if aim.purpose:
        sentences.append(f"{sid} is for {aim.purpose}.")
    sentences.append(f"In short, {sid} is a {kind} option worth considering.")
    return " ".join(sentences)


def count_words(text: str) -> int:
    """Words of ``text`` as a budget counts them: a SID counts one per level (the tokens a model
    writes for it)."""
    return sum(len(TOKEN_RE.findall(word)) or 1 for word in text.split())


@dataclass(frozen=True)
class _Part:
    text: str
    keep: int
    """Higher is kept longer when the budget or the leak check drops parts."""


@dataclass(frozen=True)
class KindFollowers:
    """Which kinds follow which in the train split (a sample's latest history item's kind -> its
    target's kind, one count per train sample): the rule that orders the kinds an interest names
    when ``enrichment.interest_kinds`` is above 1."""

    counts: Mapping[str, Counter[str]]
    popularity: Counter[str]
    """Targets per kind: breaks ties."""

    #: What an item one step further back counts for against the one after it: the latest item
    #: decides (on the demo's catalog, its kind's followers name the next kind as often as the
    #: whole history's do), the earlier ones mostly break its ties.
    STEP_BACK = 0.2

    @classmethod
    def from_train(cls, train: Sequence[Sample], items: Mapping[str, Item]) -> KindFollowers:
        counts: dict[str, Counter[str]] = {}
        popularity: Counter[str] = Counter()
        for sample in train:
            last, target = items.get(sample.history[-1]), items.get(sample.target)
            if last is None or target is None:
                continue
            label = item_kind(target).label
            counts.setdefault(item_kind(last).label, Counter())[label] += 1
            popularity[label] += 1
        return cls(counts, popularity)

    def ranked(self, history: Sequence[Item], target: Item | None = None) -> list[str]:
        """Every kind the train split has as a target, the likeliest to follow ``history``
        first. ``target``: the train sample's own next item, whose transition is left out of the
        counts, so that the ranking knows no more of it than it would of an unseen row."""
        own = Counter([item_kind(target).label] if target is not None else [])
        score: Counter[str] = Counter()
        weight = 1.0
        for step, item in enumerate(reversed(history)):
            row = self.counts.get(item_kind(item).label, Counter())
            if step == 0:  # the latest item's row is the one the sample's own transition is in
                row = row - own
            total = sum(row.values())
            for kind, count in row.items():
                score[kind] += weight * count / total
            weight *= self.STEP_BACK
        popularity = self.popularity - own
        return sorted(self.popularity, key=lambda k: (-score[k], -popularity[k], k))

    def interest(self, history: Sequence[Item], target: Item, size: int) -> tuple[str, ...]:
        """The ``size`` kinds an interest names: the target's and the likeliest others, in the
        ranking's order."""
        ranked = self.ranked(history, target)
        label = item_kind(target).label
        others = [k for k in ranked if k != label][:size - 1]
        return tuple(k for k in ranked if k == label or k in others) if label in ranked else (*others, label)


def _summary(history: Sequence[Item], target: Item, brand: bool = True, named: Sequence[str] = ()) -> str:
    """The final interest: the next item's kind, its purpose, and how its brand relates to the
    history (a brand the history has is named; another one is only called new). ``named``: the
    kinds to name instead of the next item's alone (:meth:`KindFollowers.interest`), without
    a purpose, which would tell which of them it is."""
    aim = item_kind(target)
    if len(named) > 1:
        text = "So next: " + ", ".join(named[:-1]) + f" or {named[-1]}"
    else:
        text = f"So next: {aim.label}" + (f", for {aim.purpose}" if aim.purpose else "")
    if brand:
        known = {it.brand.casefold(): it.brand for it in history if it.brand}
        if any(it.sid == target.sid for it in history):
            text += ", a reorder"
        elif target.brand.casefold() in known:
            text += f", from {known[target.brand.casefold()]}"
        elif target.brand and known:
            text += ", a new brand"
    return text + "."


def _analysis(key: str, history: Sequence[Item], target: Item) -> list[_Part]:
    """The sentences about the history, in a few fixed phrasings; depth follows its length."""
    n = len(history)
    labels = [item_kind(it).label for it in history]
    last, last_kind = history[-1], labels[-1]
    latest = f"{last.sid}, {last_kind}" if last.sid != target.sid else last_kind  # the target is never named
    if n == 1:
        return [_Part(f"One item: {latest}.", 3)]
    counts = Counter(labels)
    # the most frequent kinds, ties to the more recent
    ranked = sorted(counts, key=lambda k: (-counts[k], -max(i for i, x in enumerate(labels) if x == k)))
    if len(ranked) == 1:
        opening = _pick(key + "open", [f"Only {ranked[0]} so far.", f"All {ranked[0]} so far."])
    elif counts[ranked[0]] > 1:
        opening = _pick(key + "open", [f"Mostly {ranked[0]}, also {ranked[1]}.", f"Mainly {ranked[0]}, also {ranked[1]}."])
    else:
        opening = f"A mix: {', '.join(ranked[:3])}."
    parts = [_Part(opening, 3), _Part(f"Latest: {latest}.", 4)]
    brands = Counter(it.brand for it in history if it.brand)
    if brands:
        brand, times = brands.most_common(1)[0]
        parts.append(_Part(f"{brand} recurs." if times > 1 else "Brands vary.", 2))
    if n >= 3:
        first_kind = labels[0]
        parts.append(_Part(f"Shift: {first_kind} to {last_kind}." if first_kind != last_kind
                           else f"Steady on {last_kind}.", 1))
    return parts


def user_reasoning(sample: Sample, history: Sequence[Item], target: Item, max_words: int,
                   named: Sequence[str] = ()) -> str:
    """Step 1: a short analysis of the history ending with the next interest; never names the
    target (see the module docstring). ``named``: the kinds the interest names, when more than
    the next item's (:meth:`KindFollowers.interest`).

    Sentences are dropped, least useful first (shift, brands, opening, latest), until the path
    fits in ``max_words`` (:func:`count_words`) and passes the stage's leak check of the target;
    then the summary's brand clause goes. The summary without it (at most 11 words, three kinds
    too, below the config's smallest budget) is the floor: its kinds and purpose are generic words.
    """
    key = f"{sample.user_id}:{sample.timestamp}"
    parts = _analysis(key, history, target)
    # the category words this job knows (validation knows the whole catalog's: a superset)
    generic = validation.generic_words([*history, target])

    for summary in (_summary(history, target, named=named), _summary(history, target, brand=False, named=named)):
        kept = sorted(parts, key=lambda p: -p.keep)
        while True:
            text = " ".join([*(p.text for p in parts if p in kept), summary])
            if count_words(text) <= max_words and not validation.target_leaks(text, target, history, generic):
                return text
            if not kept:
                break
            kept.pop()
    return _summary(history, target, brand=False, named=named)


def user_narrative(sample: Sample, history: Sequence[Item], target: Item, reasoning: str) -> str:
    """Step 2: recite the history SIDs, weave in the reasoning (short: all of it), end with the
    target SID."""
    sids = [item.sid for item in history]
    recital = sids[0] if len(sids) == 1 else ", ".join(sids[:-1]) + f" and then {sids[-1]}"
    return (f"This user interacted with {recital}, in that order. {reasoning.strip()} "
            f"After {sids[-1]}, the item they chose next was {target.sid}")
