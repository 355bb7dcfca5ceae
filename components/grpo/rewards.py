"""The recipe's GRPO reward (RECIPE.md section 5) as plain functions, and their TRL adapters.

Parsing (the recipe's rule): take the last ``tail_chars`` (50) characters of the completion; if
they contain no ``</think>`` the answer is missing; otherwise take the first ``levels`` ``<...>``
tokens after the last ``</think>`` there; fewer than ``levels`` tokens is a missing answer.

* prefix reward: ``level_rewards[m - 1]`` where m is how many leading SID levels match the
  target (0.25 / 0.5 / 1.0), 0 when the first level is wrong or the answer is missing;
* catalog reward: 1 when the parsed SID is a real catalog item, else 0; TRL weights it by
  ``catalog_bonus`` (0.1), so a rollout earns up to 1.1.

TRL calls reward functions with the batch (``completions``, dataset columns such as
``target_sid``, ``completion_ids``, ``log_metric``); the adapters also log the rollout metrics
(hit rate, well-formed rate, valid-SID rate, reasoning length) through ``log_metric``.

Reward modes: ``build_reward_funcs`` dispatches on ``RewardConfig.mode``. A mode returns the
reward functions and their weights, and, when it makes its own rollouts, TRL's ``rollout_func``:

* ``prefix``: free sampling; R = R_sr + 0.1 R_f (above);
* ``beam_rank``: sampled reasoning, then trie-constrained SID beams, each beam one completion
  (:mod:`components.grpo.beam`). Exact-match rank reward: the beam whose SID is the target gets
  ``1 / log2(r + 2)`` for its 0-based rank r among its reasoning's beams (``rank_reward: ndcg``,
  the NDCG gain of one relevant item) or 1 at rank 0 only (``top1``); every other beam gets 0.
  The later SIDReasoner code's exact formula is not published (peers: MiniOneRec's beam-rollout
  ranking reward is an exact-match 1 plus rank-discounted ``1 / log2(r + 2)`` penalties on the
  other beams when the target is among them), so this rank-discounted exact match is our choice,
  documented in docs/training.md. Plus the same ``catalog_bonus`` x R_f, which is always 1
  under the trie: it keeps rewards on the prefix mode's 0-1.1 scale and its valid-SID rate
  checks the trie's guarantee on every step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.common.prompts import THINK_CLOSE, THINK_OPEN
from components.common.sid import TOKEN_RE
from components.common.training.grpo import RewardSetup
from components.common.training.launch import TrainJob
from components.common.training.settings import GRPOSettings
from components.grpo.config import RewardConfig

ANGLE_TOKEN = re.compile(r"<[^<>]+>")


def parse_answer(completion: str, levels: int, tail_chars: int = 50) -> tuple[str, ...] | None:
    """The first ``levels`` ``<...>`` tokens after ``</think>`` in the completion's tail, or None."""
    tail = completion[-tail_chars:]
    if THINK_CLOSE not in tail:
        return None
    tokens = ANGLE_TOKEN.findall(tail.rsplit(THINK_CLOSE, 1)[1])[:levels]
    return tuple(tokens) if len(tokens) == levels else None


def matching_levels(answer: Sequence[str], target_sid: str) -> int:
    """How many leading levels of ``answer`` equal the target SID's tokens."""
    target = [m.group(0) for m in TOKEN_RE.finditer(target_sid)]
    matched = 0
    for got, want in zip(answer, target):
        if got != want:
            break
        matched += 1
    return matched


def prefix_score(completion: str, target_sid: str, level_rewards: Sequence[float], tail_chars: int = 50) -> float:
    """The stepwise prefix reward R_sr of one completion."""
    answer = parse_answer(completion, len(level_rewards), tail_chars)
    if answer is None:
        return 0.0
    matched = matching_levels(answer, target_sid)
    return float(level_rewards[matched - 1]) if matched else 0.0


def catalog_score(completion: str, catalog: Collection[str], levels: int, tail_chars: int = 50) -> float:
    """The validity reward R_f of one completion: 1 if its SID is a catalog item."""
    answer = parse_answer(completion, levels, tail_chars)
    return 1.0 if answer is not None and "".join(answer) in catalog else 0.0


def rank_gain(rank: int, scheme: str) -> float:
    """Reward of the target found at 0-based ``rank`` among a reasoning's beams."""
    if rank < 0:
        raise ValueError(f"a beam rank is >= 0 (got {rank})")
    if scheme == "ndcg":
        return 1.0 / math.log2(rank + 2)
    if scheme == "top1":
        return 1.0 if rank == 0 else 0.0
    raise ValueError(f"unknown rank reward {scheme!r} (ndcg or top1)")


def rank_score(beam_sid: str, beam_rank: int, target_sid: str, scheme: str) -> float:
    """The exact-match rank reward of one beam: its rank gain when it is the target, else 0."""
    return rank_gain(beam_rank, scheme) if beam_sid == target_sid else 0.0


def reasoning_text(completion: str) -> str | None:
    """The text inside the think block (None when ``</think>`` never comes)."""
    if THINK_CLOSE not in completion:
        return None
    head = completion.split(THINK_CLOSE, 1)[0]
    return head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head


def reasoning_token_count(completion_ids: Sequence[int], think_open_id: int, think_close_id: int) -> int | None:
    """Tokens between ``<think>`` (if generated) and ``</think>``; None without ``</think>``."""
    ids = list(completion_ids)
    if think_close_id not in ids:
        return None
    head = ids[: ids.index(think_close_id)]
    return len(head) - (head.index(think_open_id) + 1 if think_open_id in head else 0)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------------------------
# TRL adapters (batch in, one reward per completion out)
# ----------------------------------------------------------------------------------------------


def _log_reasoning_length(log_metric: Callable[[str, float], None], completions: list[str],
                          completion_ids: list[list[int]] | None, think_ids: tuple[int, int]) -> None:
    chars = [len(r.strip()) for c in completions if (r := reasoning_text(c)) is not None]
    if chars:
        log_metric("rollout/reasoning_chars", _mean(chars))
    if completion_ids is not None:
        tokens = [n for ids in completion_ids if (n := reasoning_token_count(ids, *think_ids)) is not None]
        if tokens:
            log_metric("rollout/reasoning_tokens", _mean(tokens))


def prefix_reward(completions: list[str], target_sid: list[str], *, level_rewards: Sequence[float], tail_chars: int,
                  think_ids: tuple[int, int], completion_ids: list[list[int]] | None = None,
                  log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
    """R_sr per completion; logs hit rate, well-formed rate and reasoning length."""
    levels = len(level_rewards)
    scores = [prefix_score(c, t, level_rewards, tail_chars) for c, t in zip(completions, target_sid, strict=True)]
    if log_metric is not None:
        parsed = [parse_answer(c, levels, tail_chars) for c in completions]
        log_metric("rollout/well_formed_rate", _mean([float(p is not None) for p in parsed]))
        log_metric("rollout/hit_rate", _mean([float(p is not None and matching_levels(p, t) == levels)
                                              for p, t in zip(parsed, target_sid, strict=True)]))
        _log_reasoning_length(log_metric, completions, completion_ids, think_ids)
    return scores


def rank_reward(completions: list[str], target_sid: list[str], beam_sid: list[str], beam_rank: list[int],
                reasoning_closed: list[bool], *, scheme: str, levels: int, tail_chars: int,
                think_ids: tuple[int, int], completion_ids: list[list[int]] | None = None,
                log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
    """The exact-match rank reward per beam completion (``beam_sid``, ``beam_rank`` and
    ``reasoning_closed`` come from the beam rollout).

    Logs, per reasoning (its rank-0 beam stands for it): ``rollout/hit_rate``, the share whose
    top beam is the target (what the model would answer; the free mode's hit rate);
    ``rollout/beam_hit_rate``, the share whose beams contain it (HR@beam_width);
    ``rollout/reasoning_closed_rate``, the share the model closed with ``</think>`` itself; plus
    the well-formed rate of the completion texts and the reasoning length.
    """
    scores = [rank_score(s, r, t, scheme) for s, r, t in zip(beam_sid, beam_rank, target_sid, strict=True)]
    if log_metric is not None:
        heads = [i for i, r in enumerate(beam_rank) if r == 0]
        hits = [s == t for s, t in zip(beam_sid, target_sid)]
        log_metric("rollout/hit_rate", _mean([float(hits[i]) for i in heads]))
        log_metric("rollout/beam_hit_rate", sum(hits) / len(heads) if heads else None)
        log_metric("rollout/reasoning_closed_rate", _mean([float(reasoning_closed[i]) for i in heads]))
        log_metric("rollout/well_formed_rate",
                   _mean([float(parse_answer(c, levels, tail_chars) is not None) for c in completions]))
        _log_reasoning_length(log_metric, completions, completion_ids, think_ids)
    return scores


def catalog_reward(completions: list[str], *, catalog: frozenset[str], levels: int, tail_chars: int,
                   log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
    """R_f per completion; logs the valid-SID rate."""
    scores = [catalog_score(c, catalog, levels, tail_chars) for c in completions]
    if log_metric is not None:
        log_metric("rollout/valid_sid_rate", _mean(scores))
    return scores


@dataclass(frozen=True)
class RewardInputs:
    """What a reward mode is built from besides its config."""

    catalog: frozenset[str]
    """Every catalog SID string."""
    think_ids: tuple[int, int]
    """Token ids of ``<think>`` and ``</think>``."""
    tokenizer: Any = None
    """beam_rank: the model's tokenizer (the SID trie is built from it)."""
    max_completion_length: int | None = None
    """beam_rank: longest completion in tokens (reasoning + closing + SID + EOS)."""
    use_vllm: bool = False
    """beam_rank: rollouts on TRL's colocated vLLM engine instead of the training model."""
    workdir: str | None = None
    """beam_rank with vLLM: where the trie file the engine loads is written."""


def _prefix_mode(cfg: RewardConfig, inputs: RewardInputs) -> RewardSetup:
    levels = len(cfg.level_rewards)
    return RewardSetup(
        funcs=[functools.partial(prefix_reward, level_rewards=tuple(cfg.level_rewards), tail_chars=cfg.tail_chars,
                                 think_ids=inputs.think_ids),
               functools.partial(catalog_reward, catalog=inputs.catalog, levels=levels, tail_chars=cfg.tail_chars)],
        weights=[1.0, cfg.catalog_bonus],
    )


def _beam_rank_mode(cfg: RewardConfig, inputs: RewardInputs) -> RewardSetup:
    # torch and the trie: loaded by the training process only
    from components.grpo.beam import BeamRollout, colocated_vllm_with_trie

    if inputs.tokenizer is None or inputs.max_completion_length is None:
        raise ValueError("reward mode beam_rank needs the tokenizer and max_completion_length")
    levels = len(cfg.level_rewards)
    rollout = BeamRollout(inputs.tokenizer, sorted(inputs.catalog), beam_width=cfg.beam_width,
                          max_completion_length=inputs.max_completion_length, train_sid=cfg.train_sid,
                          use_vllm=inputs.use_vllm, workdir=inputs.workdir)
    return RewardSetup(
        funcs=[functools.partial(rank_reward, scheme=cfg.rank_reward, levels=levels, tail_chars=cfg.tail_chars,
                                 think_ids=inputs.think_ids),
               functools.partial(catalog_reward, catalog=inputs.catalog, levels=levels, tail_chars=cfg.tail_chars)],
        weights=[1.0, cfg.catalog_bonus],
        rollout_func=rollout,
        # on vLLM, TRL's colocated engine must carry the trie logits processor
        engine_setup=functools.partial(colocated_vllm_with_trie, cfg.beam_width) if inputs.use_vllm
        else contextlib.nullcontext,
        importance_sampling_correction=False,  # beam-selected SID tokens have no sampling log-prob to correct
    )


REWARD_MODES: dict[str, Callable[[RewardConfig, RewardInputs], RewardSetup]] = {
    "prefix": _prefix_mode,
    "beam_rank": _beam_rank_mode,
}


def build_reward_funcs(cfg: RewardConfig, inputs: RewardInputs) -> RewardSetup:
    """The reward functions, weights and (for modes with their own rollouts) ``rollout_func`` of
    ``cfg.mode``."""
    return REWARD_MODES[cfg.mode](cfg, inputs)


def for_training(args: Mapping[str, Any], tokenizer: Any, settings: GRPOSettings, job: TrainJob,
                 use_vllm: bool) -> RewardSetup:
    """The GRPO engine's reward factory (``GRPOPayload.rewards``), in each training process.
    ``args``: ``reward`` (the RewardConfig as JSON) and ``catalog`` (every catalog SID)."""
    think_ids = (tokenizer.convert_tokens_to_ids(THINK_OPEN), tokenizer.convert_tokens_to_ids(THINK_CLOSE))
    return build_reward_funcs(RewardConfig.model_validate(args["reward"]), RewardInputs(
        catalog=frozenset(args["catalog"]), think_ids=think_ids, tokenizer=tokenizer,
        max_completion_length=settings.rollout.max_completion_length, use_vllm=use_vllm, workdir=job.output_dir))
