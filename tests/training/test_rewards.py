"""The recipe's GRPO reward on an exhaustive table of completions (RECIPE.md section 5)."""

from __future__ import annotations

import pytest

from components.grpo import rewards
from components.grpo.config import RewardConfig

TARGET = "<a_1><b_2><c_3>"
CATALOG = frozenset({"<a_1><b_2><c_3>", "<a_1><b_2><c_4>", "<a_1><b_5><c_3>", "<a_9><b_2><c_3>"})
LEVELS = (0.25, 0.5, 1.0)
THINK = "<think>\nThe user buys pens, then paper.\n</think>\n\n"

CASES = [
    # (case, completion, prefix reward R_sr, catalog reward R_f)
    ("exact match", THINK + "<a_1><b_2><c_3>", 1.0, 1.0),
    ("two levels match, real item", THINK + "<a_1><b_2><c_4>", 0.5, 1.0),
    ("one level matches, real item", THINK + "<a_1><b_5><c_3>", 0.25, 1.0),
    ("one level matches, not an item", THINK + "<a_1><b_7><c_7>", 0.25, 0.0),
    ("two levels match, not an item", THINK + "<a_1><b_2><c_9>", 0.5, 0.0),
    ("first level wrong, rest right, real item", THINK + "<a_9><b_2><c_3>", 0.0, 1.0),
    ("first level wrong, not an item", THINK + "<a_8><b_2><c_3>", 0.0, 0.0),
    ("second wrong, third right", THINK + "<a_1><b_9><c_3>", 0.25, 0.0),
    ("missing </think>", "<think>\nreasons\n\n<a_1><b_2><c_3>", 0.0, 0.0),
    ("no think block at all", "<a_1><b_2><c_3>", 0.0, 0.0),
    ("only 2 tokens", THINK + "<a_1><b_2>", 0.0, 0.0),
    ("empty completion", "", 0.0, 0.0),
    ("extra text after the SID", THINK + "<a_1><b_2><c_3> is it", 1.0, 1.0),
    ("extra text before the SID", THINK + "Answer: <a_1><b_2><c_3>", 1.0, 1.0),
    ("spaces between SID tokens", THINK + "<a_1> <b_2> <c_3>", 1.0, 1.0),
    ("</think> pushed out of the last 50 chars", THINK + "<a_1><b_2><c_3>" + " and more words" * 4, 0.0, 0.0),
    ("long reasoning before a short answer", "<think>\n" + "pens " * 300 + "</think>\n\n<a_1><b_2><c_3>", 1.0, 1.0),
    ("tokens in the wrong order", THINK + "<b_2><a_1><c_3>", 0.0, 0.0),
    ("other <...> markup first", THINK + "<b>x</b><a_1><b_2><c_3>", 0.0, 0.0),
    ("two </think>: the last one counts", "</think> <a_9><b_9><c_9> </think><a_1><b_2><c_3>", 1.0, 1.0),
    ("four SID tokens: the first three count", THINK + "<a_1><b_2><c_3><d_4>", 1.0, 1.0),
]


@pytest.mark.parametrize(("case", "completion", "prefix", "valid"), CASES, ids=[c[0] for c in CASES])
def test_recipe_reward_table(case, completion, prefix, valid):
    assert rewards.prefix_score(completion, TARGET, LEVELS) == prefix
    assert rewards.catalog_score(completion, CATALOG, levels=3) == valid


def test_parse_answer_follows_the_recipe_rule():
    assert rewards.parse_answer(THINK + "<a_1><b_2><c_3>", levels=3) == ("<a_1>", "<b_2>", "<c_3>")
    assert rewards.parse_answer(THINK + "<a_1><b_2>", levels=3) is None
    assert rewards.parse_answer(THINK + "<a_1><b_2>", levels=2) == ("<a_1>", "<b_2>")
    assert rewards.parse_answer("x" * 60 + "</think><a_1><b_2><c_3>", levels=3, tail_chars=10) is None


def test_reasoning_length_measures():
    assert rewards.reasoning_text("<think>\nabc\n</think>\n\n<a_1>") == "\nabc\n"
    assert rewards.reasoning_text("abc</think><a_1>") == "abc"
    assert rewards.reasoning_text("<think> never closed") is None
    assert rewards.reasoning_token_count([7, 1, 2, 3, 8, 4], think_open_id=7, think_close_id=8) == 3
    assert rewards.reasoning_token_count([1, 2, 8, 4], think_open_id=7, think_close_id=8) == 2
    assert rewards.reasoning_token_count([1, 2, 4], think_open_id=7, think_close_id=8) is None


def test_trl_adapters_score_batches_and_log_rollout_metrics():
    from trl.trainer.utils import get_callable_name

    setup = rewards.build_reward_funcs(RewardConfig(), rewards.RewardInputs(CATALOG, think_ids=(7, 8)))
    assert [get_callable_name(f) for f in setup.funcs] == ["prefix_reward", "catalog_reward"]
    assert setup.weights == [1.0, 0.1] and setup.rollout_func is None  # free sampling: TRL generates
    completions = [THINK + "<a_1><b_2><c_3>", THINK + "<a_1><b_2><c_4>", "no answer", THINK + "<a_8><b_0><c_0>"]
    ids = [[7, 1, 1, 8, 5], [7, 1, 8, 5], [1, 1, 1], [7, 8, 5]]
    logged: dict[str, float] = {}
    prefix = setup.funcs[0](prompts=["p"] * 4, completions=completions, completion_ids=ids, target_sid=[TARGET] * 4,
                            log_metric=logged.__setitem__, trainer_state=None)
    valid = setup.funcs[1](prompts=["p"] * 4, completions=completions, completion_ids=ids, target_sid=[TARGET] * 4,
                           log_metric=logged.__setitem__)
    assert prefix == [1.0, 0.5, 0.0, 0.0]
    assert valid == [1.0, 1.0, 0.0, 0.0]
    assert logged["rollout/hit_rate"] == 0.25
    assert logged["rollout/well_formed_rate"] == 0.75
    assert logged["rollout/valid_sid_rate"] == 0.5
    assert logged["rollout/reasoning_tokens"] == pytest.approx((2 + 1 + 0) / 3)
    assert logged["rollout/reasoning_chars"] == pytest.approx(len("The user buys pens, then paper."))
