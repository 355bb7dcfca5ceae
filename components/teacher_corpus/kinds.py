"""What kind of product an item is, and what it is for, in a small fixed vocabulary.

The offline writer's analysis speaks of interests as product kinds ("pens", "ink & toner") and
purposes ("writing", "printing"): a few dozen words a small model can learn to write and that
carry the signal that decodes the next SID (the first SID levels group items of a kind). An
item's kind is its most specific category when the catalog has categories (the demo catalog),
else the head noun of its title read against :data:`KINDS` (the Amazon release packs have no
categories): the rightmost kind word of the first title clause that has one ("Paper Mate Gel
Pens, Fine Point" -> pens), else of its description, else "other items". Its purpose comes from
the same table, matched against the category or title.

These words are *generic*: the leak check lets a reasoning path use them even when the target's
title holds them (:func:`vocabulary`).

The table is written for office products. A catalog it does not know (games, tools: most titles
would read as "other items") gets its kinds from its SIDs instead (:func:`sid_kinds`): an item's
kind is its first SID code's, labelled by the title word that best tells that code's items from
the rest of the catalog ("cartridges", "envelopes"), with no purpose. The first code groups items
by their text embeddings, and it is the first token a model decodes after the interest.
:func:`catalog_kinds` picks the source (``enrichment.kinds``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from components.common.artifacts import Item
from components.common.leaks import words
from components.common.sid import split_tokens

#: (kind, purpose, the words of titles that name it). Multi-word entries match whole phrases.
KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("pens", "writing", ("pen", "ballpoint", "rollerball", "fineliner", "pen ink")),
    ("pencils", "writing", ("pencil",)),
    ("refills", "writing", ("refill", "nib", "converter", "lead")),
    ("markers", "marking", ("marker", "highlighter")),
    ("ink & toner", "printing", ("ink", "cartridge", "toner", "drum", "ribbon", "printhead")),
    ("paper", "printing", ("paper", "cardstock", "photo paper")),
    ("printers", "printing", ("printer", "label printer")),
    ("notebooks", "note taking", ("notebook", "notepad", "pad", "journal", "tablet", "sticky notes", "note",
                                  "memo", "composition book")),
    ("cards", "note taking", ("card", "index card", "flash card")),
    ("labels", "labeling", ("label", "sticker", "tag", "label maker", "label tape")),
    ("tape & glue", "sticking", ("tape", "glue", "adhesive", "glue stick", "dispenser")),
    ("binders", "filing", ("binder", "sheet protector", "protector", "divider", "portfolio")),
    ("folders", "filing", ("folder", "file", "tab", "jacket", "pocket")),
    ("mailing supplies", "mailing", ("envelope", "mailer", "wrap", "bubble mailer", "bag", "tube", "postage")),
    ("organizers", "organizing", ("organizer", "tray", "holder", "caddy", "sorter", "rack", "stand", "drawer",
                                  "storage", "bin", "case", "bookend", "cabinet")),
    ("calculators", "calculating", ("calculator",)),
    ("shredders", "shredding", ("shredder", "shredder oil", "shredder bag")),
    ("staplers & punches", "fastening", ("stapler", "staple", "punch", "hole punch", "staple remover")),
    ("clips & pins", "fastening", ("clip", "paperclip", "binder clip", "paper clip", "pin", "tack", "band",
                                   "rubber band", "fastener")),
    ("cutting tools", "cutting and drafting", ("scissors", "cutter", "trimmer", "knife", "blade",
                                              "letter opener", "ruler", "scale", "template", "compass",
                                              "protractor", "triangle")),
    ("planners", "planning", ("planner", "calendar", "diary", "agenda", "appointment book", "organizer book")),
    ("boards", "presenting", ("board", "whiteboard", "easel", "corkboard", "clipboard", "chart")),
    ("stamps", "stamping", ("stamp", "ink pad", "stamp pad")),
    ("laminators", "laminating", ("laminator", "pouch", "laminating pouch")),
    ("erasers", "correcting", ("eraser", "correction tape", "correction fluid", "whiteout")),
    ("sharpeners", "sharpening", ("sharpener",)),
    ("electronics", "computing", ("mouse", "mousepad", "mouse pad", "keyboard", "headset", "cable", "charger",
                                  "adapter", "battery", "phone", "telephone", "webcam", "speaker", "usb")),
    ("furniture", "furnishing", ("chair", "desk", "mat", "chair mat", "wastebasket", "shelf", "lamp",
                                 "footrest", "cushion")),
    ("art supplies", "drawing", ("crayon", "paint", "brush", "canvas", "sketchbook", "watercolor", "pastel")),
)
OTHER = "other items"
#: Words no kind is named by (nor an offline keyword).
STOPWORDS = frozenset(
    "a an and are as at by for from in into is it of on or the to with without this that these those "
    "pack set pcs count inch inches x new".split())

_CLAUSE = re.compile(r",|;|:|\(|\)|\[|\]|\||/| - | – | for | with | w/ | w | in | and ", re.I)


@dataclass(frozen=True)
class Kind:
    label: str
    purpose: str | None


def _singular(word: str) -> str:
    for suffix, keep in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("sses", "ss"), ("xes", "x"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2 and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + keep
    return word


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


#: keyword phrase (singular words) -> its kind, for the longest phrase first.
_PHRASES: dict[tuple[str, ...], Kind] = {
    tuple(_singular(w) for w in words(phrase)): Kind(label, purpose)
    for label, purpose, phrases in KINDS for phrase in (label, *phrases)
}
_LONGEST = max(len(p) for p in _PHRASES)


def _rightmost(text: str) -> Kind | None:
    """The kind named last in ``text`` (at one position, the longest phrase wins)."""
    seq = [_singular(w) for w in words(text)]
    for end in range(len(seq), 0, -1):
        for size in range(min(_LONGEST, end), 0, -1):
            kind = _PHRASES.get(tuple(seq[end - size:end]))
            if kind is not None:
                return kind
    return None


@lru_cache(maxsize=65536)
def kind_of(title: str, categories: tuple[str, ...] = (), description: str = "") -> Kind:
    """The item's kind (see the module docstring)."""
    if categories:
        label = categories[-1].lower()
        match = _rightmost(categories[-1]) or _rightmost(title)
        return Kind(label, match.purpose if match else None)
    for clause in _CLAUSE.split(title):
        if (kind := _rightmost(clause)) is not None:
            return kind
    return _rightmost(description[:300]) or Kind(OTHER, None)


def _forms(text: str) -> set[str]:
    return {form for w in words(text) for form in (w, _singular(w), _plural(_singular(w)))}


#: The kind table's words (labels and phrases, singular and plural) and purposes.
_TABLE_WORDS = frozenset(
    {form for label, _, phrases in KINDS for text in (label, *phrases, OTHER) for form in _forms(text)}
    | {w for _, purpose, _ in KINDS for w in words(purpose)})


def vocabulary(categories: Sequence[str] = ()) -> frozenset[str]:
    """The generic words: every word of the kind table, plus those of ``categories``."""
    return _TABLE_WORDS.union(*(_forms(c) for c in set(categories)))


def _label_words(item: Item) -> set[str]:
    """The words of an item's title that could name its kind: letters only, three or more, no
    stopword, singular."""
    return {_singular(w) for w in words(item.title) if w.isalpha() and len(w) >= 3 and w not in STOPWORDS}


def sid_kinds(items: Iterable[Item]) -> dict[str, Kind]:
    """A kind for every first SID code of ``items`` (its token -> the kind): the title word with
    the highest share of the code's items times its inverse document frequency in the catalog
    (what those items have in common and the rest of the catalog has not), in the plural; each
    word labels one code (the larger codes choose first), and a word that is mostly a brand's
    (the words of Avery's titles) or that only one item has labels none. A code without such a
    word is "other items"."""
    items = list(items)
    titles = {it.item_id: _label_words(it) for it in items}
    df = Counter(w for ws in titles.values() for w in ws)
    brand_df = Counter(w for it in items for w in titles[it.item_id] & {_singular(b) for b in words(it.brand)})
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(split_tokens(it.sid)[0], []).append(it)
    used: set[str] = set()
    kinds: dict[str, Kind] = {}
    for code, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        counts = Counter(w for it in members for w in titles[it.item_id])
        scored = [(n / len(members) * math.log(len(items) / df[w]), w) for w, n in counts.items()
                  if n >= 2 and w not in used and 2 * brand_df[w] < df[w]]
        if scored:
            word = max(scored)[1]
            used.add(word)
            kinds[code] = Kind(_plural(word), None)
        else:
            kinds[code] = Kind(OTHER, None)
    return kinds


KindSource = Literal["auto", "table", "sid"]
#: ``auto`` keeps the table when it names a kind for at least this share of the items: the
#: demo's categories name all, Office's titles 97%; below it the interest would too often be
#: "other items".
TABLE_COVERAGE = 0.8


def table_kind(item: Item) -> Kind:
    """The item's kind by its categories or the table (:func:`kind_of`)."""
    return kind_of(item.title, item.categories, item.description)


@dataclass(frozen=True)
class CatalogKinds:
    """The kinds of one catalog's items, from one source (``enrichment.kinds``): call it with an
    item for its kind."""

    source: Literal["table", "sid"]
    table_coverage: float
    """The share of the catalog's items the table names a kind for (not "other items")."""
    by_code: dict[str, Kind] = field(default_factory=dict)
    """``sid`` only: first SID token -> kind (:func:`sid_kinds`)."""

    def __call__(self, item: Item) -> Kind:
        if self.source == "table":
            return table_kind(item)
        return self.by_code.get(split_tokens(item.sid)[0], Kind(OTHER, None))

    def labels(self) -> set[str]:
        """Every kind label it can give (``sid``); the table's are in :func:`vocabulary` already."""
        return {kind.label for kind in self.by_code.values()}

    def summary(self) -> dict[str, object]:
        return {"source": self.source, "table_coverage": round(self.table_coverage, 4),
                "kinds": len(self.labels()) if self.source == "sid" else None}


def catalog_kinds(items: Sequence[Item], source: KindSource) -> CatalogKinds:
    """The catalog's kinds from ``source``; ``auto``: the table when it names a kind for
    :data:`TABLE_COVERAGE` of the items, else the SIDs."""
    coverage = sum(table_kind(it).label != OTHER for it in items) / max(len(items), 1)
    if source == "table" or (source == "auto" and coverage >= TABLE_COVERAGE):
        return CatalogKinds("table", coverage)
    return CatalogKinds("sid", coverage, sid_kinds(items))

