"""Does a text name a target item? The leak check of reasoning paths, shared by every stage that
checks one (teacher_corpus when it accepts a teacher output, align_sft when it reads the
reasoning artifact).

A reasoning path is the ``<think>`` part of the reasoning-activation data: if it names the
answer, the model learns to copy it from its own thoughts. A string-exact check misses the
near-misses a teacher writes (or a probe plants), so both checks here compare *normalised* text:

* :func:`names_sid`: the target SID in any spelling of its codes in order, with or without the
  level letters: ``<A_3><B_8><C_12>``, ``a_3 b_8 c_12``, ``a3-b8-c12``, ``[a_3][b_8][c_12]``,
  full-width ``＜ａ＿３＞...``, ``(3, 8, 12)``, ``a_3, b_8 and c_12``. Case is folded, Unicode
  is NFKC-normalised (full-width forms), HTML entities are decoded, invisible format characters
  dropped, and Cyrillic or Greek look-alikes of the level letters read as the letters.
  Separators (brackets of any script, underscores, spaces, punctuation) do not matter.
* :func:`names_title`: the target's title, or a near-identical one, compared word by word
  (:func:`words`). *Distinctive* words are the title's words that are neither common words,
  nor ``allowed`` (category words, the history's brands), nor words of the history's titles
  (what the history shares with the target may be discussed), nor single letters or one- and
  two-digit numbers. A text names the title when it
  holds (1) the whole title; (2) at least 60% of the distinctive words, two at least; (3) a
  distinctive model code (``CB335WN``) in any spelling (``cb-335-wn``); or (4) a near copy: a
  passage a few word edits away from the title (the title minus a word, with a word changed or
  added) or a run of 60% of its words in order, that holds a distinctive word or four words
  (one not allowed: a brand is no title), unless a history title is as close to the passage as
  the target's (then it is about that item).
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

from components.common.sid import LEVEL_LETTERS, TOKEN_RE, parse_sid

#: Cyrillic and Greek letters (casefolded) that look like Latin ones (NFKC keeps them).
_LOOKALIKES = str.maketrans({
    "а": "a", "α": "a", "ь": "b", "в": "b", "β": "b", "с": "c", "ϲ": "c", "ԁ": "d",
    "е": "e", "ε": "e", "ғ": "f", "ɡ": "g", "һ": "h", "і": "i", "ι": "i", "ј": "j", "ϳ": "j",
    "о": "o", "ο": "o", "р": "p", "ρ": "p", "х": "x", "у": "y",
})
_WORD = re.compile(r"[^\W_]+")
_PIECE = re.compile(r"\d+|[^\W\d_]+")
#: Words that may join the codes of a SID written out ("a_3, b_8 and c_12").
_JOINERS = frozenset({"and", "then"})

#: Common words: function words, packaging and units, and the plain words of an analysis of
#: shopping behaviour. Never distinctive, whatever title they occur in.
COMMON_WORDS = frozenset("""
a about above after again all also an and any are as at be been before being both but by can
could do does each either for from had has have he her his how i if in into is it its just
like may me might more most mostly my new next no nor not of off on one only or other our out
over own per same she should so some such than that the their them then there these they this
those through to too two under up us very was we were what when where which while who why will
with would you your
pack packs pk pcs pc piece pieces count ct set sets box boxes lot size sizes inch inches in
mm cm ft feet oz lb lbs x w h model item items product products brand brands
see seen latest recent recently earlier interest interests shift steady stays stay
mainly mix far recurs vary reorder expect likely need needs want wants use uses used using user users
""".split())


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """``text`` as compared: HTML entities decoded, NFKC (full-width forms become ASCII),
    invisible format characters dropped, casefolded, letter look-alikes mapped to Latin."""
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.casefold().translate(_LOOKALIKES)


def words(text: str) -> list[str]:
    """The words of ``text``: runs of letters and digits of the folded text (``"TN-450xl"`` ->
    ``tn 450xl``); titles are compared word by word."""
    return _WORD.findall(fold(text))


def pieces(text: str) -> list[str]:
    """The words of ``text`` cut where letters meet digits (``"a3b8"`` -> ``a 3 b 8``); SIDs and
    model codes are compared piece by piece, so any spelling matches."""
    return _PIECE.findall(fold(text))


def _number(word: str) -> int | None:
    return int(word) if word.isdecimal() else None


# ----------------------------------------------------------------------------------------------
# SIDs
# ----------------------------------------------------------------------------------------------


def _sid_at(seq: Sequence[str], start: int, codes: Sequence[int]) -> bool:
    """Whether the SID of ``codes`` is written at ``seq[start:]``: per level an optional level
    letter (the right one) and the code; joiners allowed between levels."""
    i = start
    for level, code in enumerate(codes):
        if level and i < len(seq) and seq[i] in _JOINERS:
            i += 1
        if i < len(seq) and seq[i] == LEVEL_LETTERS[level]:
            i += 1
        if i >= len(seq) or _number(seq[i]) != code:
            return False
        i += 1
    return True


def names_sid(text: str, sid: str) -> bool:
    """Whether ``text`` names ``sid`` (a well-formed SID) in any normalised spelling.

    A bare first code right after a single letter is another level's code (``b_3`` in
    ``<a_5><b_3><c_8>``), not the start of the SID: adjacent history SIDs never add up to the
    target.
    """
    codes = parse_sid(sid)
    seq = pieces(text)
    for start, word in enumerate(seq):
        if word == LEVEL_LETTERS[0] or (_number(word) == codes[0] and not (
                start and len(seq[start - 1]) == 1 and not seq[start - 1].isdigit())):
            if _sid_at(seq, start, codes):
                return True
    return False


# ----------------------------------------------------------------------------------------------
# Titles
# ----------------------------------------------------------------------------------------------


def _edit_distance(a: Sequence[str], b: Sequence[str], limit: int) -> int:
    """Word-level Levenshtein distance, or ``limit + 1`` once it must exceed ``limit``."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def allowed_edits(n: int) -> int:
    """Word edits a passage may be away from an ``n``-word title and still be the title: one up
    to 8 words, then one more per 8 words."""
    return 1 + max(0, n - 1) // 8


def _common_runs(seq: Sequence[str], title: Sequence[str], minimum: int) -> Iterator[Sequence[str]]:
    """Runs of at least ``minimum`` consecutive words of ``seq`` that are consecutive in ``title``."""
    previous = [0] * (len(title) + 1)
    for i, x in enumerate(seq, 1):
        current = [0] * (len(title) + 1)
        for j, y in enumerate(title, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                if current[j] >= minimum:
                    yield seq[i - current[j]:i]
        previous = current


def _near_copies(seq: Sequence[str], title: Sequence[str]) -> Iterator[Sequence[str]]:
    """Passages of ``seq`` close to ``title``: within :func:`allowed_edits` of it, or a run of
    60% of its words in order (four at least)."""
    n, k = len(title), allowed_edits(len(title))
    in_title = set(title)
    hits = [0]
    for word in seq:  # hits[i]: words of seq[:i] that occur in the title
        hits.append(hits[-1] + (word in in_title))
    for length in range(max(2, n - k), n + k + 1):
        for start in range(0, len(seq) - length + 1):
            # a passage within k edits keeps n - k title words: skip the others without the distance
            if hits[start + length] - hits[start] >= n - k:
                window = seq[start:start + length]
                if _edit_distance(window, title, k) <= k:
                    yield window
    for run in _common_runs(seq, title, max(4, math.ceil(0.6 * n))):
        yield run


def _names_via_passage(seq: Sequence[str], title: Sequence[str], distinctive: set[str], allowed: set[str],
                       history: Sequence[Sequence[str]]) -> bool:
    """A near copy of ``title`` that is not about a history item: one holding a distinctive word,
    or of four words or more of which one at least is a title word (not common, not allowed:
    a brand alone is no title), that no history title is as close to."""
    for passage in _near_copies(seq, title):
        if not (distinctive.intersection(passage)
                or (len(passage) >= 4 and set(passage) - COMMON_WORDS - allowed)):
            continue
        distance = _edit_distance(passage, title, len(title) + len(passage))
        if not any(_edit_distance(passage, other, distance) <= distance for other in history):
            return True
    return False


def _model_codes(title_words: Sequence[str]) -> list[list[str]]:
    """The title's model codes (one word of letters and at least two digits, four characters or
    more: ``CB335WN``, ``T252XL``), each as its pieces."""
    return [_PIECE.findall(word) for word in title_words
            if len(word) >= 4 and sum(c.isdigit() for c in word) >= 2 and any(c.isalpha() for c in word)]


def _contains(seq: Sequence[str], part: Sequence[str]) -> bool:
    n = len(part)
    return any(list(seq[i:i + n]) == list(part) for i in range(len(seq) - n + 1))


def distinctive_words(title: str, history_titles: Iterable[str] = (), allowed: Iterable[str] = ()) -> set[str]:
    """The title's words that name it: not common, not ``allowed``, not in any of the
    ``history_titles``, not a single letter and not a number of one or two digits (counts and
    sizes)."""
    ignored = set(COMMON_WORDS) | set(allowed)
    for text in history_titles:
        ignored.update(words(text))
    return {w for w in words(title) if w not in ignored and len(w) > 1 and not (w.isdigit() and len(w) <= 2)}


def names_title(text: str, title: str, history_titles: Iterable[str] = (), allowed: Iterable[str] = ()) -> bool:
    """Whether ``text`` names ``title`` or a near-identical title (see the module docstring).

    ``history_titles``: the titles of the history's items (not the target's own when the
    history has it): their words are shared, and a passage closer to one of them is about it.
    ``allowed``: more words a text may use freely (folded, as :func:`words` gives them):
    category words, the history's brands. SIDs in ``text`` are ignored (their codes are no
    title words).
    """
    title_words = words(title)
    if not title_words:
        return False
    text = TOKEN_RE.sub(" ", text)
    seq = words(text)
    if _contains(seq, title_words):
        return True
    history_titles = list(history_titles)
    allowed = set(allowed)
    distinctive = distinctive_words(title, history_titles, allowed)
    present = distinctive.intersection(seq)
    if len(present) >= 2 and 5 * len(present) >= 3 * len(distinctive):
        return True
    codes = _model_codes(title_words)
    if codes:  # a code the history or the allowed words have entirely is no one's name
        shared = allowed.union(*(pieces(t) for t in history_titles))
        text_pieces = pieces(text)
        if any(_contains(text_pieces, code) for code in codes if not set(code) <= shared):
            return True
    return len(title_words) >= 3 and _names_via_passage(seq, title_words, distinctive, allowed,
                                                        [words(t) for t in history_titles])
