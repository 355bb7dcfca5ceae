"""Golden first steps of each training stage, as torchtune's recipe tests pin them: a seeded run
on the tiny model and the synthetic corpus, its per-step training losses (and GRPO's mean
rewards) compared with the values pinned in ``golden_steps.json``.

A change to the loss, the data encoding, the optimizer, the learning-rate schedule, the
rewards or the rollouts moves these numbers; the other training tests check behaviour
(weights move, the reward rises) and would not notice. A deliberate change re-pins them:

    GOLDEN_UPDATE=1 .venv/bin/python -m pytest -q tests/training/test_golden.py

and the diff of ``golden_steps.json`` goes into the commit that changes the numbers. The values
are those of torch 2.13 on a CPU in one thread (tests/training/conftest.py), which are the same
from run to run; the tolerance only absorbs float summation order.

Each stage starts from its own fixed model, so a change to one stage moves only its own numbers,
except GRPO, which needs a model that already writes the reasoning format to earn rewards: it
starts from the reasoning-activation run of this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from components.align_sft import STAGE as ALIGN
from components.grpo import STAGE as GRPO
from components.reason_sft import STAGE as REASON
from tests.training.synthetic import write_reasoning
from tests.training.test_stages import GRPO_TARGET, align_inputs, run_stage, sid_tokens

GOLDEN = Path(__file__).with_name("golden_steps.json")
#: Steps compared per stage (the first ones of each run).
STEPS = {"align_sft": 5, "align_sft_label_smoothing": 5, "reason_sft": 6, "grpo": 4}
#: Relative tolerance (torchtune's recipe tests use 1e-3 too); GRPO's first losses are about 0
#: (advantages sum to zero per group; the KL starts at 0), so its losses also get an absolute one.
RTOL, GRPO_LOSS_ATOL = 1e-3, 1e-7
#: Steps of reasoning activation: enough for the tiny model to write "ok</think><SID>" sometimes,
#: so GRPO's first rewards are neither all 0 nor all equal.
REASON_STEPS = 30


def losses(run: dict) -> list[float]:
    """Per-step training losses of a stage run, from the Trainer's log history saved with the model."""
    result = json.loads((Path(run["outputs"]["model"]) / "training_result.json").read_text())
    return [record["loss"] for record in result["log_history"] if "loss" in record]


def check(stage: str, observed: dict[str, list[float]], atol: dict[str, float] | None = None) -> None:
    """Compare ``observed`` series with the pinned ones of ``stage`` (or re-pin them with GOLDEN_UPDATE=1)."""
    observed = {name: values[: STEPS[stage]] for name, values in observed.items()}
    for name, values in observed.items():
        assert len(values) == STEPS[stage], f"{stage}: {len(values)} {name} values logged, expected {STEPS[stage]}"
    pinned = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("GOLDEN_UPDATE") == "1":
        pinned[stage] = observed
        GOLDEN.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    assert stage in pinned, f"{GOLDEN} has no {stage} values: run with GOLDEN_UPDATE=1 to pin them"
    for name, values in observed.items():
        tolerance = (atol or {}).get(name, 0.0)
        assert values == pytest.approx(pinned[stage][name], rel=RTOL, abs=tolerance), (stage, name, values)


@pytest.fixture(scope="module")
def sid_model(tmp_path_factory, tiny_backbone, synthetic) -> Path:
    """The tiny backbone with the SID tokens added (seeded), untrained: reasoning activation's start."""
    from components.common.training.backbone import extend_with_sids

    tmp = tmp_path_factory.mktemp("golden_sid_model")
    extend_with_sids(tiny_backbone, tmp / "model", sid_tokens(synthetic), tmp / "download", seed=42)
    return tmp / "model"


@pytest.fixture(scope="module")
def reason(tmp_path_factory, synthetic, sid_model, tracking_uri) -> dict:
    tmp = tmp_path_factory.mktemp("golden_reason")
    reasoning = write_reasoning(tmp / "reasoning.parquet", 64, targets=[0, GRPO_TARGET])
    return run_stage(REASON, {
        "learning_rate": 3e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_steps": REASON_STEPS,
        "global_batch_size": 16, "per_device_batch_size": 16, "max_length": 512, "eval_strategy": "no",
        "early_stopping_patience": None, "eval_fraction": 0, "checkpoint": {"every_steps": 100},
    }, tmp, {"sft_model": str(sid_model), "reasoning": reasoning, "sid_map": synthetic["sid_map"]}, tracking_uri)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_align_sft_first_losses_are_the_pinned_ones(tmp_path, synthetic, tiny_backbone, tracking_uri, label_smoothing,
                                                   recwarn):
    # linear decay from 3e-3 over 10 steps, 2 micro-batches of 4 per step: the schedule and the
    # gradient accumulation both shape the first losses
    run = run_stage(ALIGN, {
        "backbone": {"uri": str(tiny_backbone)}, "learning_rate": 3e-3, "warmup_steps": 0,
        "max_steps": 10, "global_batch_size": 8, "per_device_batch_size": 4, "max_length": 512,
        "eval_strategy": "no", "early_stopping_patience": None, "checkpoint": {"every_steps": 100},
        "label_smoothing": label_smoothing,
    }, tmp_path, align_inputs(synthetic), tracking_uri)
    check("align_sft_label_smoothing" if label_smoothing else "align_sft", {"loss": losses(run)})
    if label_smoothing:  # the smoothing reached the loss: the same run, other losses
        pinned = json.loads(GOLDEN.read_text())
        assert pinned["align_sft_label_smoothing"]["loss"] != pytest.approx(pinned["align_sft"]["loss"], rel=RTOL)
    # TRL's warning that smoothing costs its fused kernel an extra forward is not about the CPU loss
    assert not [w for w in recwarn if "label_smoothing_factor" in str(w.message)]


def test_reason_sft_first_losses_are_the_pinned_ones(reason):
    check("reason_sft", {"loss": losses(reason)})


def test_grpo_first_losses_and_rewards_are_the_pinned_ones(tmp_path, synthetic, reason, tracking_uri):
    prompts = write_reasoning(tmp_path / "prompts.parquet", 32, targets=[GRPO_TARGET], seed=1)
    run = run_stage(GRPO, {
        "learning_rate": 5e-4, "num_generations": 8, "per_device_batch_size": 16, "max_steps": STEPS["grpo"],
        "rollout_batch_size": 16, "rollout": {"max_completion_length": 16, "max_prompt_length": 512},
        "checkpoint": {"every_steps": 100}, "validation": {"every_steps": None},
    }, tmp_path, {"reasoning_model": reason["outputs"]["model"], "reasoning": prompts,
                  "sid_map": synthetic["sid_map"]}, tracking_uri)
    table = run["stats"]["steps"]
    rewards = [row["reward"] for row in table]
    assert len(set(rewards)) > 1 and max(rewards) > 0  # rewards that can move: a meaningful golden
    check("grpo", {"loss": [row["loss"] for row in table], "reward": rewards}, atol={"loss": GRPO_LOSS_ATOL})
