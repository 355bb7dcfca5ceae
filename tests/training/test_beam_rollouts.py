"""GRPO's second reward mode: the exact-match rank reward over trie-constrained beam rollouts.

The rank reward on a table; the rollout function on a tiny random model (every beam a catalog
SID, groups laid out as TRL expects, the closing and EOS masked out of the loss); the same
rollout through the vLLM engine code driven by a stand-in engine; and real GRPOTrainer steps
through the training entry point with the rollout function.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig

from components.common import artifacts, modeling, prompts, sid
from components.common.config import ConfigError, parse_section
from components.common.constrained_vllm import (
    MODEL_RUNNER_ENV,
    V2_PROCESSOR_FQCN,
    SidTrieV1LogitsProcessor,
    SidTrieV2LogitsProcessor,
)
from components.common.training import grpo as grpo_engine
from components.common.training import launch
from components.common.training.settings import GRPOSettings, settings_of
from components.grpo import beam, rewards
from components.grpo.config import GRPOStageConfig, RewardConfig
from components.grpo.stage import check_beam_layout, check_beam_tokens
from tests.common.fake_vllm import FakeV1Engine, FakeV2Engine
from tests.tiny_sid_model import build_sid_model
from tests.training.conftest import CPU, weights

CODEBOOKS = (2, 3, 4)
CATALOG = sorted(sid.format_sid((a, b, c)) for a in range(2) for b in range(3) for c in range(4))[::3]  # 8 SIDs
TARGET = "<a_1><b_2><c_3>"

# ----------------------------------------------------------------------------------------------
# The reward
# ----------------------------------------------------------------------------------------------

RANK_CASES = [
    # (case, beam SID, rank, scheme, reward)
    ("target at the top, ndcg", TARGET, 0, "ndcg", 1.0),
    ("target second, ndcg", TARGET, 1, "ndcg", 1 / math.log2(3)),
    ("target third, ndcg", TARGET, 2, "ndcg", 0.5),
    ("target tenth, ndcg", TARGET, 9, "ndcg", 1 / math.log2(11)),
    ("target at the top, top1", TARGET, 0, "top1", 1.0),
    ("target second, top1", TARGET, 1, "top1", 0.0),
    ("another SID at the top", "<a_1><b_2><c_4>", 0, "ndcg", 0.0),
    ("two levels right is still a miss", "<a_1><b_2><c_0>", 0, "ndcg", 0.0),
    ("another SID lower down", "<a_0><b_0><c_0>", 3, "ndcg", 0.0),
    ("another SID, top1", "<a_0><b_0><c_0>", 0, "top1", 0.0),
]


@pytest.mark.parametrize(("case", "beam_sid", "rank", "scheme", "expected"), RANK_CASES,
                         ids=[c[0] for c in RANK_CASES])
def test_rank_reward_table(case, beam_sid, rank, scheme, expected):
    assert rewards.rank_score(beam_sid, rank, TARGET, scheme) == pytest.approx(expected)


def test_rank_gain_rejects_nonsense():
    with pytest.raises(ValueError, match="rank is >= 0"):
        rewards.rank_gain(-1, "ndcg")
    with pytest.raises(ValueError, match="unknown rank reward"):
        rewards.rank_gain(0, "mrr")


def test_rank_reward_adapter_scores_beams_and_logs_per_reasoning_metrics():
    think = "<think>\nok\n</think>\n\n"
    # two reasonings x three beams: the first finds the target second, the second misses it
    beam_sids = ["<a_0><b_0><c_0>", TARGET, "<a_1><b_0><c_0>", "<a_0><b_0><c_0>", "<a_0><b_1><c_0>", "<a_0><b_2><c_0>"]
    logged: dict[str, float] = {}
    scores = rewards.rank_reward(
        completions=[think + s for s in beam_sids], target_sid=[TARGET] * 6, beam_sid=beam_sids,
        beam_rank=[0, 1, 2, 0, 1, 2], reasoning_closed=[True] * 3 + [False] * 3, scheme="ndcg", levels=3,
        tail_chars=50, think_ids=(7, 8), completion_ids=[[7, 1, 8, 5, 5, 5]] * 6, log_metric=logged.__setitem__)
    assert scores == pytest.approx([0.0, 1 / math.log2(3), 0.0, 0.0, 0.0, 0.0])
    assert logged["rollout/hit_rate"] == 0.0  # neither top beam is the target
    assert logged["rollout/beam_hit_rate"] == 0.5  # one reasoning of two has it among its beams
    assert logged["rollout/reasoning_closed_rate"] == 0.5
    assert logged["rollout/well_formed_rate"] == 1.0
    assert logged["rollout/reasoning_tokens"] == 1


# ----------------------------------------------------------------------------------------------
# The rollout function on a tiny model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_sid_model(tmp_path_factory.mktemp("beam") / "model", CODEBOOKS, seed=5)
    model, tokenizer = modeling.load_causal_lm(folder)
    return SimpleNamespace(folder=folder, model=model, tokenizer=tokenizer)


def texts(tokenizer, n: int) -> list[str]:
    return [prompts.render_prompt(tokenizer, prompts.reasoning_messages(CATALOG[i:i + 2])) for i in range(n)]


def hf_engine(tiny, rollout: beam.BeamRollout, generation_rows: int = 64, **generation) -> beam.HfEngine:
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              pad_token_id=tiny.tokenizer.pad_token_id, **generation)
    return beam.HfEngine(lambda: contextlib.nullcontext(tiny.model), config, rollout.trie, tiny.tokenizer.pad_token_id,
                         beam_rows=8, generation_rows=generation_rows)


def check_rollout(out: dict, rollout: beam.BeamRollout, tokenizer, prompt_texts: list[str], group: int,
                  max_completion_length: int) -> None:
    """What TRL's ``_generate`` and our reward functions need, and the trie's guarantee."""
    width = rollout.beam_width
    n = len(prompt_texts) * group
    assert out["logprobs"] is None
    for key in ("prompt_ids", "completion_ids", "env_mask", "beam_sid", "beam_rank", "reasoning_closed"):
        assert len(out[key]) == n, key
    assert set(out["beam_sid"]) <= set(CATALOG)  # never an invalid SID
    expected_prompts = tokenizer(text=prompt_texts)["input_ids"]
    for i in range(n):
        assert out["prompt_ids"][i] == expected_prompts[i // group]
    for start in range(0, n, width):  # one reasoning: its beams, best first, all different
        assert out["beam_rank"][start:start + width] == list(range(width))
        assert len(set(out["beam_sid"][start:start + width])) == width
        heads = out["completion_ids"][start:start + width]
        reasoning_part = [ids[: -(rollout.trie.depth + 1)] for ids in heads]
        assert all(part == reasoning_part[0] for part in reasoning_part)  # the beams share the reasoning
    for ids, mask, beam_sid, closed in zip(out["completion_ids"], out["env_mask"], out["beam_sid"],
                                           out["reasoning_closed"]):
        assert len(ids) == len(mask) <= max_completion_length
        assert ids[-1] == tokenizer.eos_token_id and mask[-1] == 0
        sid_ids = ids[-(rollout.trie.depth + 1):-1]
        assert tokenizer.decode(sid_ids) == beam_sid
        assert mask[-(rollout.trie.depth + 1):-1] == [int(rollout.train_sid)] * rollout.trie.depth
        closing = rollout.separator_ids if closed else rollout.closing_ids
        end = len(ids) - rollout.trie.depth - 1
        assert ids[end - len(closing):end] == closing and mask[end - len(closing):end] == [0] * len(closing)
        assert mask[: end - len(closing)] == [1] * (end - len(closing))  # the sampled reasoning is trained
        assert (ids[end - len(closing) - 1] == rollout.close_id) == closed
        text = tokenizer.decode(ids, skip_special_tokens=True)  # what TRL hands the reward functions
        assert rewards.parse_answer(text, levels=3) == tuple(sid.split_tokens(beam_sid))


def test_beam_rollouts_are_valid_groups_of_catalog_sids(tiny):
    rollout = beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=3, max_completion_length=20)
    assert rollout.reasoning_budget == 20 - len(rollout.closing_ids) - 3 - 1
    prompt_texts = texts(tiny.tokenizer, 3)
    torch.manual_seed(0)
    out = rollout.rollout([t for t in prompt_texts for _ in range(6)], hf_engine(tiny, rollout), group=6)
    check_rollout(out, rollout, tiny.tokenizer, prompt_texts, group=6, max_completion_length=20)
    assert not any(out["reasoning_closed"])  # a random model does not write </think>: the rollout closes it


def test_reasoning_alone_is_trained_without_train_sid(tiny):
    """``reward.train_sid: false``: the beams' SID tokens leave the loss, the sampled reasoning stays."""
    rollout = beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=2, max_completion_length=20, train_sid=False)
    prompt_texts = texts(tiny.tokenizer, 2)
    torch.manual_seed(0)
    out = rollout.rollout([t for t in prompt_texts for _ in range(4)], hf_engine(tiny, rollout), group=4)
    check_rollout(out, rollout, tiny.tokenizer, prompt_texts, group=4, max_completion_length=20)
    assert all(mask[-(rollout.trie.depth + 1):-1] == [0] * rollout.trie.depth for mask in out["env_mask"])
    assert all(sum(mask) > 0 for mask in out["env_mask"])  # every completion still trains its reasoning


def test_reasoning_the_model_closes_keeps_its_think_token(tiny):
    rollout = beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=2, max_completion_length=16)
    prompt_texts = texts(tiny.tokenizer, 2)
    # no EOS, and the last token of a reasoning cut at the budget forced to </think>: every one ends "closed"
    engine = hf_engine(tiny, rollout, forced_eos_token_id=rollout.close_id,
                       suppress_tokens=[tiny.tokenizer.eos_token_id])
    torch.manual_seed(1)
    out = rollout.rollout([t for t in prompt_texts for _ in range(4)], engine, group=4)
    check_rollout(out, rollout, tiny.tokenizer, prompt_texts, group=4, max_completion_length=16)
    assert all(out["reasoning_closed"])


def test_sampled_continuations_are_closed_by_how_they_end(tiny):
    rollout = beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=2, max_completion_length=16)
    eos = tiny.tokenizer.eos_token_id
    closed = rollout.close([5, 6, rollout.close_id], [eos])
    assert (closed.token_ids, closed.closing_ids, closed.closed) == ([5, 6, rollout.close_id],
                                                                      rollout.separator_ids, True)
    ended = rollout.close([5, 6, eos], [eos])  # EOS before </think>: dropped, the block closed for it
    assert (ended.token_ids, ended.closing_ids, ended.closed) == ([5, 6], rollout.closing_ids, False)
    cut = rollout.close([5, 6, 7], [eos])
    assert (cut.token_ids, cut.closing_ids, cut.closed) == ([5, 6, 7], rollout.closing_ids, False)
    assert tiny.tokenizer.decode(rollout.closing_ids) == "\n</think>\n\n"


def test_prompts_must_come_in_whole_groups(tiny):
    rollout = beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=2, max_completion_length=16)
    engine = hf_engine(tiny, rollout)
    with pytest.raises(beam.GroupLayoutError, match="not whole groups of 4"):
        rollout.rollout(["a"] * 6, engine, group=4)
    with pytest.raises(beam.GroupLayoutError, match="group 1 mixes different prompts"):
        rollout.rollout(["a"] * 4 + ["b", "b", "c", "c"], engine, group=4)


def test_rollout_settings_the_tokenizer_cannot_serve_are_refused(tiny):
    with pytest.raises(ValueError, match="larger than the catalog"):
        beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=9, max_completion_length=64)
    with pytest.raises(ValueError, match="leaves no room for reasoning"):
        beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=2, max_completion_length=8)
    cfg = parse_section(GRPOStageConfig, {**CPU, "reward": {"mode": "beam_rank"},
                                          "rollout": {"max_completion_length": 8}}, "grpo")
    with pytest.raises(ConfigError, match="grpo.reward.mode beam_rank: max_completion_length 8 leaves no room"):
        check_beam_tokens(cfg, tiny.tokenizer, frozenset(CATALOG))


# ----------------------------------------------------------------------------------------------
# The vLLM engine code, on a stand-in engine
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_rollout_through_the_vllm_engine_code(runner, tiny, tmp_path):
    """The rollout on a stand-in of TRL's colocated engine on either vLLM model runner: sampled
    reasoning with stop tokens, then the beam search through the real trie logits processor."""
    rollout = beam.BeamRollout(tiny.tokenizer, CATALOG, beam_width=2, max_completion_length=16, use_vllm=True,
                               workdir=tmp_path)
    assert Path(rollout.trie_path).is_file()  # what the engine's logits processor loads
    llm = (FakeV1Engine(tiny.model, SidTrieV1LogitsProcessor(None, torch.device("cpu"), False), seed=2)
           if runner == "v1" else FakeV2Engine(tiny.model, SidTrieV2LogitsProcessor, seed=2))
    engine = beam.VllmEngine(llm, rollout.trie, rollout.trie_path, {"temperature": 1.0},
                             sampling_params=lambda **kw: SimpleNamespace(**kw))
    prompt_texts = texts(tiny.tokenizer, 2)
    out = rollout.rollout([t for t in prompt_texts for _ in range(4)], engine, group=4,
                          stop_ids=[rollout.close_id, tiny.tokenizer.eos_token_id])
    check_rollout(out, rollout, tiny.tokenizer, prompt_texts, group=4, max_completion_length=16)


def test_trls_colocated_engine_is_built_with_the_trie_processor(monkeypatch):
    from trl.generation import vllm_generation

    monkeypatch.setenv(MODEL_RUNNER_ENV, "unset below; restored after the test")
    monkeypatch.delenv(MODEL_RUNNER_ENV)
    calls = []
    monkeypatch.setattr(vllm_generation, "LLM", lambda *a, **kw: calls.append(kw) or "engine", raising=False)
    with beam.colocated_vllm_with_trie(beam_width=32):
        assert vllm_generation.LLM(model="m", logprobs_mode="processed_logprobs", seed=3) == "engine"
    assert calls == [{"model": "m", "seed": 3, "logits_processors": [V2_PROCESSOR_FQCN],
                      "logprobs_mode": "processed_logits", "enable_prefix_caching": True, "max_logprobs": 32}]
    assert os.environ[MODEL_RUNNER_ENV] == "1"  # the runner whose processor is named, pinned for vLLM
    vllm_generation.LLM(model="m")  # restored afterwards
    assert calls[-1] == {"model": "m"}


# ----------------------------------------------------------------------------------------------
# Selection, validation, and real GRPOTrainer steps
# ----------------------------------------------------------------------------------------------


def test_mode_selects_the_rollout_function(tiny):
    think_ids = (tiny.tokenizer.convert_tokens_to_ids("<think>"), tiny.tokenizer.convert_tokens_to_ids("</think>"))
    inputs = rewards.RewardInputs(catalog=frozenset(CATALOG), think_ids=think_ids, tokenizer=tiny.tokenizer,
                                  max_completion_length=32)
    free = rewards.build_reward_funcs(RewardConfig(), inputs)
    assert free.rollout_func is None and [f.func.__name__ for f in free.funcs] == ["prefix_reward", "catalog_reward"]
    ranked = rewards.build_reward_funcs(RewardConfig(mode="beam_rank", beam_width=2, rank_reward="top1",
                                                     train_sid=False), inputs)
    assert isinstance(ranked.rollout_func, beam.BeamRollout) and ranked.rollout_func.beam_width == 2
    assert ranked.rollout_func.train_sid is False
    assert [f.func.__name__ for f in ranked.funcs] == ["rank_reward", "catalog_reward"]
    assert ranked.funcs[0].keywords["scheme"] == "top1" and ranked.weights == [1.0, 0.1]
    with pytest.raises(ValueError, match="needs the tokenizer"):
        rewards.build_reward_funcs(RewardConfig(mode="beam_rank"), rewards.RewardInputs(frozenset(CATALOG), (1, 2)))


def test_beam_layout_checks_of_the_stage():
    cfg = parse_section(GRPOStageConfig, {**CPU, "num_generations": 8, "rollout_batch_size": 48,
                                          "per_device_batch_size": 8, "reward": {"mode": "beam_rank"}}, "grpo")
    check_beam_layout(cfg, world=3, catalog_size=100)  # 6 prompts over 3 processes: 2 whole groups each
    with pytest.raises(ConfigError, match=r"grpo.rollout_batch_size: 48 rollouts over 4 training processes is 12 "
                                          r"per process, not whole groups"):
        check_beam_layout(cfg, world=4, catalog_size=100)
    with pytest.raises(ConfigError, match="grpo.reward.beam_width: 4 beams but the sid_map has only 3 items"):
        check_beam_layout(cfg, world=1, catalog_size=3)


@pytest.mark.parametrize("train_sid", [True, False], ids=["reasoning and SID", "reasoning alone"])
def test_rollout_func_runs_real_grpo_steps(tiny, tmp_path, train_sid):
    """Two GRPOTrainer steps through the training entry point with the beam rollout: the weights
    move and the per-step metrics are logged, whether the SID tokens are trained or only the
    reasoning is. The beams cover the whole catalog, so every group holds the target at some rank
    and the rank reward varies within it."""
    from datasets import Dataset

    tokenizer = tiny.tokenizer
    catalog = CATALOG[:4]
    prompt_texts = texts(tokenizer, 4)
    Dataset.from_dict({"prompt": prompt_texts, "target_sid": [catalog[i % 4] for i in range(4)]}).save_to_disk(
        str(tmp_path / "prompts"))
    cfg = parse_section(GRPOStageConfig, {
        **CPU, "learning_rate": 1e-3, "max_steps": 2, "num_generations": 8, "rollout_batch_size": 16,
        "per_device_batch_size": 16, "reward": {"mode": "beam_rank", "beam_width": 4, "train_sid": train_sid},
        "rollout": {"engine": "hf", "max_completion_length": 16, "max_prompt_length": 512},
        "validation": {"every_steps": None}}, "grpo")
    payload = grpo_engine.GRPOPayload(
        settings=settings_of(cfg, GRPOSettings), base_model=str(tiny.folder), prompts=str(tmp_path / "prompts"),
        gradient_accumulation_steps=1, use_vllm=False, rewards="components.grpo.rewards:for_training",
        reward_args={"reward": cfg.reward.model_dump(mode="json"), "catalog": catalog},
        record=artifacts.ModelRecord(sid_space=None, sid_map_digest=None, stage="grpo"),
        sid_vocab=sorted(artifacts.model_sid_vocabulary(str(tiny.folder))))
    job = launch.TrainJob(entry=grpo_engine.ENTRY, stage="grpo", payload=payload.model_dump(mode="json"),
                          output_dir=str(tmp_path / "ckpt"), final_dir=str(tmp_path / "final"),
                          checkpoint_uri=str(tmp_path / "remote"), checkpoint_every=100, keep_checkpoints=1)
    setup = grpo_engine.build_rewards(payload, tokenizer, job)
    assert grpo_engine.grpo_arguments(payload.settings, job, 1, False, None, setup)[
        "vllm_importance_sampling_correction"] is False
    launch.run_entry(job)

    result = json.loads(job.result_path.read_text())
    steps = [r for r in result["log_history"] if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        assert record["rollout/valid_sid_rate"] == 1.0 and record["rollout/well_formed_rate"] == 1.0
        assert record["rollout/beam_hit_rate"] == 1.0  # 4 beams over a 4-SID catalog
        assert 0.0 <= record["rollout/hit_rate"] <= 1.0 and 0.0 <= record["rollout/reasoning_closed_rate"] <= 1.0
        assert 1 / math.log2(5) / 4 <= record["rewards/rank_reward/mean"] <= 1 / 4 + 1e-6  # one hit in 4 beams
        assert record["reward_std"] > 0 and record["completions/clipped_ratio"] == 0.0  # every completion ends in EOS
        assert "kl" in record and record["rollout/reasoning_tokens"] >= 0
    before, after = weights(tiny.folder), weights(job.final_dir)
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert "lm_head.weight" in moved or "model.embed_tokens.weight" in moved
    assert len(moved) > len(before) // 2, moved
