"""The shared leak detector against an adversarial table: near-miss spellings of the target's SID
and title that must be caught, and honest texts (history SIDs, words the history shares with the
target, generic words) that must pass."""

from __future__ import annotations

import pytest

from components.common import leaks

TARGET_SID = "<a_3><b_8><c_12>"
TARGET_TITLE = "Zebra Sarasa Clip Retractable Gel Pens, Fine Point, Blue, 10 Count (JJ15-BL10)"
#: What the history shows: its items' titles, and its brands and generic (category) words.
HISTORY = ["Zebra Sarasa Dry Gel Pens, Black, 12 Count", "Pilot G2 Retractable Gel Pens, Red",
           "Mead Spiral Notebook, College Ruled"]
ALLOWED = {"zebra", "pilot", "mead", "pen", "pens", "notebook", "notebooks", "writing"}
#: Three history SIDs: two whose codes run into the target's when written side by side, one
#: sharing the target's first two levels.
H1, H2, H3 = "<a_5><b_3><c_8>", "<a_12><b_3><c_8>", "<a_3><b_8><c_11>"
SHORT_TITLE = "Swingline Optima 40 Stapler"  # a second target: a short title, none of it in the history

CASES = [
    # -- the target SID, spelled every way a teacher (or a probe) writes it: caught -----------
    ("sid exact", f"Next they buy {TARGET_SID}.", {"sid"}),
    ("sid upper case", "Next they buy <A_3><B_8><C_12>.", {"sid"}),
    ("sid as words", "Next they buy a_3 b_8 c_12.", {"sid"}),
    ("sid full-width", "Next they buy ＜ａ＿３＞＜ｂ＿８＞＜ｃ＿１２＞.", {"sid"}),
    ("sid square brackets", "Next: [a_3][b_8][c_12]", {"sid"}),
    ("sid CJK angle brackets", "Next: 〈a_3〉〈b_8〉〈c_12〉", {"sid"}),
    ("sid guillemets", "Next: «a_3» «b_8» «c_12»", {"sid"}),
    ("sid dashes, no underscores", "Next: a3-b8-c12", {"sid"}),
    ("sid squashed upper", "Next: A3B8C12", {"sid"}),
    ("sid bare codes in a tuple", "The codes will be (3, 8, 12).", {"sid"}),
    ("sid bare codes dashed", "I predict 3-8-12 next.", {"sid"}),
    ("sid with joiners", "I bet on a_3, b_8 and c_12.", {"sid"}),
    ("sid with cyrillic letters", "Next: <а_3><b_8><с_12>", {"sid"}),
    ("sid with zero-width spaces", "Next: <a_3>\u200b<b_8>\u200b<c_12>", {"sid"}),
    ("sid with leading zeros", "Next: <a_03><b_008><c_012>", {"sid"}),
    ("sid full-width digits only", "Next: ３ ８ １２", {"sid"}),
    ("sid spaced out", "Next: < a _ 3 > < b _ 8 > < c _ 12 >", {"sid"}),
    ("sid one token per line", "Next:\n<a_3>\n<b_8>\n<c_12>", {"sid"}),
    ("sid as assignments", "Next: a=3, b=8, c=12", {"sid"}),
    ("sid as html entities", "Next: &lt;a_3&gt;&lt;b_8&gt;&lt;c_12&gt;", {"sid"}),
    # -- SIDs that are not the target: pass --------------------------------------------------
    ("history sids side by side", f"They bought {H1}{H2} and {H1}, {H2}.", set()),
    ("sibling sid sharing two levels", f"Latest: {H3}, pens.", set()),
    ("longer last code", "Latest: <a_3><b_8><c_120>.", set()),
    ("longer first code", "Latest: <a_13><b_8><c_12>.", set()),
    ("sibling sid then a count", f"Latest: {H3} and 12 more.", set()),
    ("counts in prose", "3 of 8 items were pens; 12 days apart.", set()),
    # -- the target title and near-identical titles: caught ----------------------------------
    ("title exact", f"Surely they buy {TARGET_TITLE} next.", {"title"}),
    ("title lower case, hyphens", "surely the zebra-sarasa-clip-retractable-gel-pens-fine-point-blue-10-count-jj15-bl10",
     {"title"}),
    ("title minus its last word", "They want Zebra Sarasa Clip Retractable Gel Pens, Fine Point, Blue, 10 Count (JJ15",
     {"title"}),
    ("title with one word changed", "They want Zebra Sarasa Clip Retractable Gel Pens, Fine Point, Red, 10 Count "
     "(JJ15-BL10)", {"title"}),
    ("title without its model code", "They want Zebra Sarasa Clip Retractable Gel Pens, Fine Point, Blue, 10 Count.",
     {"title"}),
    ("most distinctive words, reordered", "Blue ones, with a clip, fine point.", {"title"}),
    ("model code alone", "They want the JJ15-BL10.", {"title"}),
    ("model code respelled", "They want a jj 15 pen.", {"title"}),
    ("title full-width", "They want Ｚｅｂｒａ Ｓａｒａｓａ Ｃｌｉｐ Ｒｅｔｒａｃｔａｂｌｅ Ｇｅｌ Ｐｅｎｓ, Ｆｉｎｅ Ｐｏｉｎｔ, "
     "Ｂｌｕｅ, １０ Ｃｏｕｎｔ (ＪＪ１５-ＢＬ１０)", {"title"}),
    ("title with zero-width spaces", "They want Zebra Sa\u200brasa Cl\u200bip Retractable Gel Pens, Fine Point, "
     "Blue, 10 Count", {"title"}),
    # -- words the history shares, generic words, a few distinctive words: pass ---------------
    ("shared brand and generic kind", "Mostly gel pens from Zebra, also notebooks. So next: pens, from Zebra.", set()),
    ("shared attribute", "They like retractable gel pens.", set()),
    ("a history title", "Latest: Zebra Sarasa Dry Gel Pens, Black, 12 Count.", set()),
    ("one distinctive word", "They need a blue pen next.", set()),
    ("two of six distinctive words", "A fine point pen, for writing.", set()),
    ("pack counts", "They buy 10 count packs, sometimes 12 count.", set()),
    ("a summary naming both", f"Mostly pens, also notebooks. Latest: {H3}, pens. Zebra recurs. So next: pens, "
     "for writing, from Zebra.", set()),
]

SHORT_CASES = [
    ("short title minus its last word", "Next: a Swingline Optima 40.", {"title"}),
    ("short title minus a middle word", "Next: the swingline optima stapler", {"title"}),
    ("short title, both distinctive words", "Optima by Swingline, next.", {"title"}),
    ("short title, brand alone", "They may try Swingline next.", set()),
    ("short title, kind alone", "So next: staplers, for fastening.", set()),
]


#: Near copies against histories that share most of the target's words: (name, target title,
#: history titles, allowed words, text, caught?).
LAMINATING = "Scotch Thermal Laminating Pouches, 4.37 Inches x 6.36 Inches, 20 Pouches (TP5900-20)"
INK = "Noodlers Ink 3 Oz Blue-Black"
STICKERS = "me & my BIG ideas Fitness Stickers"
PASSAGE_CASES = [
    ("title minus its code, every word shared", LAMINATING, ["Scotch Thermal Laminator 2 Roller System (TL901C)"],
     {"scotch", "laminating", "pouches"}, "Next: Scotch Thermal Laminating Pouches, 4.37 Inches x 6.36 Inches, 20 "
     "Pouches.", True),
    ("shared brand and kind", LAMINATING, ["Scotch Thermal Laminator 2 Roller System (TL901C)"],
     {"scotch", "laminating", "pouches"}, "So next: laminating pouches, from Scotch, thermal ones.", False),
    ("as close to a history title as to the target", INK, ["Noodlers Ink 3 Oz Borealis Black"], {"noodlers", "ink"},
     "They like Noodlers Ink 3 Oz bottles.", False),
    ("closer to the target than to the history title", INK, ["Noodlers Ink 3 Oz Borealis Black"],
     {"noodlers", "ink"}, "Next: Noodlers Ink 3 Oz Blue.", True),
    ("a brand of several words is no title", STICKERS, ["me & my BIG ideas PPS-61 Life Quotes Sticker Pack"],
     {"me", "my", "big", "ideas", "sticker", "stickers"}, "So next: stickers, from Me & My Big Ideas.", False),
    ("the brand and a distinctive word", STICKERS, ["me & my BIG ideas PPS-61 Life Quotes Sticker Pack"],
     {"me", "my", "big", "ideas", "sticker", "stickers"}, "So next: Me & My Big Ideas Fitness.", True),
]


def _leaks(text: str, sid: str, title: str, history: list[str]) -> set[str]:
    found = set()
    if leaks.names_sid(text, sid):
        found.add("sid")
    if leaks.names_title(text, title, history, ALLOWED | {"stapler", "staplers", "fastening"}):
        found.add("title")
    return found


@pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=name) for name, t, e in CASES])
def test_adversarial_table(text, expected):
    assert _leaks(text, TARGET_SID, TARGET_TITLE, HISTORY) == expected


@pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=name) for name, t, e in SHORT_CASES])
def test_short_title(text, expected):
    assert _leaks(text, "<a_1><b_2><c_3>", SHORT_TITLE, HISTORY) == expected


@pytest.mark.parametrize("title, history, allowed, text, caught",
                         [pytest.param(*case[1:], id=case[0]) for case in PASSAGE_CASES])
def test_near_copies_against_a_sharing_history(title, history, allowed, text, caught):
    assert leaks.names_title(text, title, history, allowed) is caught


def test_the_history_sharing_words_makes_them_discussable():
    """The same text is a leak or not depending on what the history shares with the target."""
    text = "Blue ones, with a clip, fine point."
    assert leaks.names_title(text, TARGET_TITLE, HISTORY, ALLOWED)
    assert not leaks.names_title(text, TARGET_TITLE, [*HISTORY, "Pentel Clip Pens, Fine Point, Blue"], ALLOWED)


def test_words_fold_separators_case_and_lookalikes():
    assert leaks.words("ＴＮ-450xl") == ["tn", "450xl"] and leaks.pieces("ＴＮ-450xl") == ["tn", "450", "xl"]
    assert leaks.pieces("<А_3>") == ["a", "3"]  # Cyrillic capital A
    assert leaks.allowed_edits(4) == 1 and leaks.allowed_edits(9) == 2 and leaks.allowed_edits(17) == 3
