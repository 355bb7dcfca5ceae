"""The Semantic ID token format, defined once: ``<a_12><b_200><c_7>``.

A SID is one token per quantization level; level ``i`` uses the letter ``LEVEL_LETTERS[i]``
followed by ``_`` and the code. Every stage prints and parses SIDs through this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

LEVEL_LETTERS = "abcdefghij"
TOKEN_RE = re.compile(r"<([a-j])_(\d+)>")
_FULL_RE = re.compile(r"(?:<[a-j]_\d+>)+")


class SidError(ValueError):
    """A string is not a well-formed SID."""


def token(level: int, code: int) -> str:
    """The token of ``code`` at ``level`` (0-based): ``token(1, 200) == "<b_200>"``."""
    if not 0 <= level < len(LEVEL_LETTERS):
        raise SidError(f"level {level} out of range (at most {len(LEVEL_LETTERS)} levels)")
    if code < 0:
        raise SidError(f"negative code {code}")
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def format_sid(codes: Sequence[int]) -> str:
    """``[12, 200, 7]`` -> ``"<a_12><b_200><c_7>"``."""
    if not len(codes):
        raise SidError("a SID needs at least one code")
    return "".join(token(level, code) for level, code in enumerate(codes))


def parse_sid(sid: str) -> tuple[int, ...]:
    """``"<a_12><b_200><c_7>"`` -> ``(12, 200, 7)``; anything else raises :class:`SidError`."""
    if not _FULL_RE.fullmatch(sid or ""):
        raise SidError(f"not a SID: {sid!r}")
    codes = []
    for level, match in enumerate(TOKEN_RE.finditer(sid)):
        if match.group(1) != LEVEL_LETTERS[level]:
            raise SidError(f"not a SID: {sid!r} (level {level} should use '{LEVEL_LETTERS[level]}')")
        codes.append(int(match.group(2)))
    return tuple(codes)


def split_tokens(sid: str) -> list[str]:
    """``"<a_1><b_2>"`` -> ``["<a_1>", "<b_2>"]`` (validated)."""
    parse_sid(sid)
    return [m.group(0) for m in TOKEN_RE.finditer(sid)]


def find_sids(text: str, levels: int) -> list[str]:
    """Every complete SID of ``levels`` tokens (a, b, c, ... in order) mentioned in ``text``."""
    found = []
    for run in _FULL_RE.finditer(text):
        tokens = TOKEN_RE.findall(run.group(0))
        i = 0
        while i + levels <= len(tokens):
            window = tokens[i : i + levels]
            if all(letter == LEVEL_LETTERS[k] for k, (letter, _) in enumerate(window)):
                found.append("".join(f"<{letter}_{code}>" for letter, code in window))
                i += levels
            else:
                i += 1
    return found


def vocabulary(codebook_sizes: Iterable[int]) -> list[str]:
    """All SID tokens of a quantizer with these per-level codebook sizes (level-major order)."""
    return [token(level, code) for level, size in enumerate(codebook_sizes) for code in range(size)]
