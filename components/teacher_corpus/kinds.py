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
title holds them (:data:`VOCABULARY`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from components.common.leaks import words

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
