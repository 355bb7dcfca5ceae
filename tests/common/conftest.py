"""Shared by the constrained-decoding tests: a tiny random model that knows a SID vocabulary, a
catalog of 40 of its SIDs, and prompts of both kinds the stages decode."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from components.common import modeling, prompts, sid
from tests.tiny_sid_model import build_sid_model

CODEBOOKS = (4, 5, 6)


@pytest.fixture(scope="session")
def sid_model_dir(tmp_path_factory) -> Path:
    """The tiny model's ``save_pretrained`` folder."""
    return build_sid_model(tmp_path_factory.mktemp("constrained") / "model", CODEBOOKS, seed=3)


@pytest.fixture(scope="session")
def sid_model(sid_model_dir):
    """(model, tokenizer, catalog SIDs)."""
    model, tok = modeling.load_causal_lm(sid_model_dir)
    model.eval()
    rng = random.Random(7)
    codes = sorted({tuple(rng.randrange(n) for n in CODEBOOKS) for _ in range(40)})
    return model, tok, [sid.format_sid(c) for c in codes]


def sid_prompts(tok, sids) -> list[str]:
    """Two direct prompts (empty think block) and a thinking one (closed think block)."""
    return [prompts.render_prompt(tok, prompts.direct_messages(sids[:3])) + prompts.EMPTY_THINK,
            prompts.render_prompt(tok, prompts.direct_messages(sids[7:8])) + prompts.EMPTY_THINK,
            prompts.render_prompt(tok, prompts.reasoning_messages(sids[2:6])) + prompts.think_block("pens")]
