"""The SID token codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.common import sid


@given(st.lists(st.integers(0, 4095), min_size=1, max_size=6))
def test_roundtrip(codes):
    text = sid.format_sid(codes)
    assert sid.parse_sid(text) == tuple(codes)
    assert sid.split_tokens(text) == [sid.token(i, c) for i, c in enumerate(codes)]


@pytest.mark.parametrize("bad", ["", "<a_1><c_2>", "<b_1>", "<a_1> <b_2>", "<a_-1>", "a_1", "<a_1><b_2>x"])
def test_malformed(bad):
    with pytest.raises(sid.SidError):
        sid.parse_sid(bad)


def test_find_sids_in_text():
    text = "I liked <a_1><b_2><c_3> and then <a_4><b_5><c_6><a_7><b_8><c_9>; not <b_1><c_2> or <a_9><b_9>."
    assert sid.find_sids(text, 3) == ["<a_1><b_2><c_3>", "<a_4><b_5><c_6>", "<a_7><b_8><c_9>"]


def test_vocabulary():
    vocab = sid.vocabulary([2, 3])
    assert vocab == ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>"]
