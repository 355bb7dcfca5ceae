"""The three training stages end to end on a CPU with a tiny model: alignment from a saved
backbone, reasoning activation from the aligned model, GRPO from the reasoning model (both reward modes).

Each stage must change the weights it starts from, publish a complete model folder, and log the
model to MLflow with the digests of what it was trained on. GRPO must raise the mean reward of
a trivially learnable task (one target SID for every prompt) within 10 steps. Alignment keeps the
checkpoint of the best valid NDCG@5 (direct mode), reasoning activation validates in thinking
mode and GRPO every 5 steps: the stats and MLflow carry the curve and the kept step, and the
kept alignment model scores, decoded as evaluation decodes it, what its validation said.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.align_sft import STAGE as ALIGN
from components.common import artifacts, storage
from components.common.config import ConfigError, parse_section
from components.common.errors import InputError
from components.common.lineage import _mlflow
from components.grpo import STAGE as GRPO
from components.reason_sft import STAGE as REASON
from tests.training.conftest import CPU, context, scripted, weights
from tests.training.synthetic import write_reasoning

GRPO_TARGET = 13  # <a_1><b_2><c_1>


def run_stage(stage, values: dict, tmp: Path, inputs: dict[str, str], tracking_uri: str) -> dict:
    cfg = parse_section(stage.config, {**CPU, **values}, stage.name)
    outputs = {"model": str(tmp / stage.name / "model"), "stats": str(tmp / stage.name / "stats.json")}
    metadata = stage.execute(cfg, context(tmp, tracking_uri), inputs, outputs)
    return {"outputs": outputs, "metadata": metadata, "stats": storage.read_json(outputs["stats"]),
            "inputs": inputs, "tmp": tmp, "tracking_uri": tracking_uri}


def align_inputs(synthetic) -> dict[str, str]:
    return {k: synthetic[k] for k in ("items", "samples", "sid_map", "corpus")}


#: Ranking validation over the 2 valid rows of the synthetic samples (16-item catalog: 5 beams).
VALIDATION = {"metric": "ndcg", "k": 5, "beam_width": 5, "max_samples": None, "max_reasoning_tokens": 8}


@pytest.fixture(scope="module")
def align(tmp_path_factory, synthetic, tiny_backbone, tracking_uri) -> dict:
    return run_stage(ALIGN, {
        "backbone": {"uri": str(tiny_backbone)}, "learning_rate": 3e-3, "warmup_steps": 0, "max_steps": 6,
        "global_batch_size": 8, "per_device_batch_size": 4, "max_length": 512, "eval_strategy": "steps",
        "eval_steps": 3, "early_stopping_patience": 2, "checkpoint": {"every_steps": 4}, "log_model_weights": True,
        "validation": {**VALIDATION, "mode": "direct"},
    }, tmp_path_factory.mktemp("align"), align_inputs(synthetic), tracking_uri)


@pytest.fixture(scope="module")
def reason(tmp_path_factory, synthetic, align, tracking_uri) -> dict:
    tmp = tmp_path_factory.mktemp("reason")
    # reasoning "ok" and one of two targets: the format a tiny model learns in 40 steps
    reasoning = write_reasoning(tmp / "reasoning.parquet", 64, targets=[0, GRPO_TARGET])
    return run_stage(REASON, {
        "learning_rate": 3e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_steps": 40,
        # one evaluation, at the end: the synthetic valid rows' targets are not the reasoning rows' two, so
        # their NDCG stays 0 and an earlier tie would keep a model GRPO below could not start from
        "global_batch_size": 16, "per_device_batch_size": 16, "max_length": 512, "eval_strategy": "steps",
        "eval_steps": 40, "eval_fraction": 0.1, "checkpoint": {"every_steps": 20}, "validation": VALIDATION,
    }, tmp, {"sft_model": align["outputs"]["model"], "reasoning": reasoning, "sid_map": synthetic["sid_map"],
             "samples": synthetic["samples"]}, tracking_uri)


def run_grpo(tmp, settings: dict, prompts: str, reason: dict, synthetic: dict, tracking_uri: str) -> dict:
    """GRPO on ``prompts`` from the reasoning model, with ``settings`` over the shared tiny ones."""
    return run_stage(GRPO, {
        "learning_rate": 5e-4, "num_generations": 8, "per_device_batch_size": 16, "checkpoint": {"every_steps": 5},
        "rollout": {"max_completion_length": 16, "max_prompt_length": 512}, **settings,
    }, tmp, {"reasoning_model": reason["outputs"]["model"], "reasoning": prompts, "sid_map": synthetic["sid_map"],
             "samples": synthetic["samples"]}, tracking_uri)


@pytest.fixture(scope="module")
def grpo(tmp_path_factory, synthetic, reason, tracking_uri) -> dict:
    tmp = tmp_path_factory.mktemp("grpo")
    prompts = write_reasoning(tmp / "prompts.parquet", 32, targets=[GRPO_TARGET], seed=1)
    validation = {k: v for k, v in VALIDATION.items() if k != "metric"}
    # validate_start off: the trained model is the stage's output whatever the 2-row validation says
    return run_grpo(tmp, {"max_steps": 10, "rollout_batch_size": 32,
                          "validation": {**validation, "every_steps": 5, "validate_start": False}},
                    prompts, reason, synthetic, tracking_uri)


@pytest.fixture(scope="module")
def grpo_beam(tmp_path_factory, synthetic, reason, tracking_uri) -> dict:
    """The second reward mode: trie-constrained beam rollouts, exact-match rank reward."""
    tmp = tmp_path_factory.mktemp("grpo_beam")
    prompts = write_reasoning(tmp / "prompts.parquet", 16, targets=[GRPO_TARGET], seed=2)
    return run_grpo(tmp, {"max_steps": 3, "rollout_batch_size": 16, "reward": {"mode": "beam_rank", "beam_width": 4},
                          "validation": {"every_steps": None}}, prompts, reason, synthetic, tracking_uri)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Per tensor: did training move it (rows present in both, for grown embeddings)?"""
    out = {}
    for name, old in before.items():
        new = after[name]
        rows = min(old.shape[0], new.shape[0])
        out[name] = not torch.equal(old[:rows], new[:rows])
    return out


def assert_model_folder(path: str, sid_tokens: list[str]) -> None:
    folder = Path(path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "sid_vocab.json", "training_result.json", storage.MANIFEST):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "sid_vocab.json").read_text()) == sorted(sid_tokens)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["pad_token_id"] is not None and generation["eos_token_id"]


def logged_model(run: dict):
    mlflow = _mlflow()
    mlflow.set_tracking_uri(run["tracking_uri"])
    return mlflow.get_logged_model(run["stats"]["mlflow_model_id"])


def sid_tokens(synthetic) -> list[str]:
    from components.common.artifacts import read_catalog

    return list(read_catalog(synthetic["sid_map"]).tokens)


def test_align_sft_trains_every_tensor_and_publishes_the_model(align, tiny_backbone, synthetic):
    moved = changed(weights(tiny_backbone), weights(align["outputs"]["model"]))
    assert all(moved.values()), [n for n, m in moved.items() if not m]
    assert_model_folder(align["outputs"]["model"], sid_tokens(synthetic))
    stats = align["stats"]
    assert stats["global_step"] == 6 and stats["resumed_from_step"] is None
    # published: the checkpoints are gone, the finished model stays for a retried task
    assert storage.list_files(stats["checkpoint_uri"]) == [*(f"final/{f}" for f in storage.list_files(
        storage.join(stats["checkpoint_uri"], "final"))), "job.json"]
    assert [step for step, _ in stats["eval_losses"]] == [3, 6]
    assert stats["best_eval_loss"] == min(loss for _, loss in stats["eval_losses"])
    assert stats["data"]["train"]["rows"] == {"title2sid": 16, "sid2title": 16, "item_narrative": 16, "sid2sid": 8}
    assert stats["data"]["eval"]["rows"] == {"valid_sid2sid": 2}
    assert stats["train_tokens_per_s"] > 0
    model = logged_model(align)
    assert model.tags["sidreasoner.lineage.corpus"] == storage.digest(synthetic["corpus"])
    assert model.tags["sidreasoner.lineage.sid_map"] == storage.digest(synthetic["sid_map"])
    assert model.tags["sidreasoner.lineage.backbone"] == storage.digest(tiny_backbone)
    assert model.tags["sidreasoner.digest"] == align["metadata"]["model"]["digest"]
    assert model.source_run_id  # the stage's run, which also logged the inputs as datasets
    mlflow = _mlflow()
    history = mlflow.MlflowClient().get_metric_history(model.source_run_id, "train/loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]


def test_align_sft_keeps_the_checkpoint_of_the_best_valid_ndcg(align, synthetic, tmp_path):
    from components.common.artifacts import read_catalog
    from components.common.decoding import decode_all
    from components.common.decoding_config import DecoderSettings
    from components.common.training.validation import valid_rows
    from components.evaluate.metrics import row_gains, target_rank

    stats = align["stats"]
    validation = stats["validation"]
    assert (validation["metric"], validation["mode"], validation["rows"]) == ("ndcg_at_5", "direct", 2)
    curve = validation["curve"]
    assert [row["step"] for row in curve] == [3, 6]
    for row in curve:
        assert 0 <= row["ndcg_at_5"] <= row["hr_at_5"] <= 1 and row["loss"] > 0
    best = max(curve, key=lambda row: row["ndcg_at_5"])  # the first of equals
    assert (stats["best_global_step"], stats["best_metric"]) == (best["step"], best["ndcg_at_5"])
    assert (validation["kept_step"], validation["kept_value"]) == (best["step"], best["ndcg_at_5"])
    # the published model is the kept one: decoded as evaluation decodes it, it scores what its validation said
    catalog = read_catalog(synthetic["sid_map"])
    rows = valid_rows(synthetic["samples"], catalog, seed=42)
    decoded = decode_all(align["outputs"]["model"], sorted(catalog.sids), [h for h, _ in rows], ["direct"],
                         DecoderSettings(beam_width=5, device="cpu"), shards=1, seed=42, workdir=tmp_path)["direct"]
    ranks = np.array([target_rank(d.sids, t) for d, (_, t) in zip(decoded, rows)], dtype=float)
    assert row_gains(ranks, 5)["ndcg"].mean() == pytest.approx(validation["kept_value"])
    history = _mlflow().MlflowClient().get_metric_history(logged_model(align).source_run_id, "train/eval_ndcg_at_5")
    assert sorted(m.step for m in history) == [3, 6]


def test_reason_sft_starts_from_the_aligned_model(reason, align, synthetic):
    moved = changed(weights(align["outputs"]["model"]), weights(reason["outputs"]["model"]))
    assert all(moved.values())
    assert_model_folder(reason["outputs"]["model"], sid_tokens(synthetic))
    stats = reason["stats"]
    assert stats["global_step"] == 40
    assert stats["data"]["train"]["rows"] == {"reasoning": 58} and stats["data"]["eval"]["rows"] == {"held_out": 6}
    assert stats["last_train_loss"] < stats["first_train_loss"] / 3
    assert logged_model(reason).tags["sidreasoner.lineage.sft_model"] == storage.digest(align["outputs"]["model"])
    validation = stats["validation"]
    assert (validation["metric"], validation["mode"], validation["rows"]) == ("ndcg_at_5", "thinking", 2)
    (row,) = validation["curve"]
    assert row["step"] == 40 and 0 <= row["ndcg_at_5"] <= row["hr_at_5"] <= 1
    assert 0 <= row["reasoning_closed_rate"] <= 1 and 0 < row["reasoning_tokens"] <= 8
    assert validation["kept_step"] == stats["best_global_step"] == 40


def test_grpo_raises_the_mean_reward_and_reports_every_step(grpo, reason, synthetic):
    table = grpo["stats"]["steps"]
    assert [row["step"] for row in table] == list(range(1, 11))
    first = sum(r["reward"] for r in table[:3]) / 3
    last = sum(r["reward"] for r in table[-3:]) / 3
    assert last > first + 0.1, [round(r["reward"], 3) for r in table]
    assert table[-1]["hit_rate"] > table[0]["hit_rate"] or last > 0.8
    for row in table:
        assert 0 <= row["valid_sid_rate"] <= 1 and 0 <= row["hit_rate"] <= row["well_formed_rate"] <= 1
        assert row["reasoning_tokens"] is not None and row["kl"] is not None
    summary = grpo["stats"]["summary"]
    assert summary["logged_steps"] == 10 and "reward_vs_reasoning_tokens_spearman" in summary
    moved = changed(weights(reason["outputs"]["model"]), weights(grpo["outputs"]["model"]))
    assert all(moved.values())
    assert_model_folder(grpo["outputs"]["model"], sid_tokens(synthetic))
    mlflow = _mlflow()
    model = logged_model(grpo)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(model.source_run_id)}
    assert {"grpo_steps.csv", "grpo_reward_vs_reasoning.png", "grpo_stats.json"} <= artifacts
    rewards = mlflow.MlflowClient().get_metric_history(model.source_run_id, "train/reward")
    assert sorted(m.step for m in rewards) == list(range(1, 11))
    assert mlflow.MlflowClient().get_metric_history(model.source_run_id, "train/rollout/reasoning_tokens")
    # the periodic validation: steps 5 and 10 in the table, the curve, MLflow; the best one kept
    assert [row["step"] for row in table if row["validation_ndcg"] is not None] == [5, 10]
    validation = grpo["stats"]["validation"]
    assert [row["step"] for row in validation["curve"]] == [5, 10] and validation["mode"] == "thinking"
    best = max(validation["curve"], key=lambda row: row["ndcg_at_5"])
    assert (validation["kept_step"], validation["kept_value"]) == (best["step"], best["ndcg_at_5"])
    history = mlflow.MlflowClient().get_metric_history(model.source_run_id, "train/eval_ndcg_at_5")
    assert sorted(m.step for m in history) == [5, 10]


def test_grpo_that_never_beats_its_start_publishes_the_reasoning_model(tmp_path, synthetic, reason, tracking_uri,
                                                                      monkeypatch, caplog):
    """The starting model validates best (step 0): the stage's model has its weights and GRPO's
    record, the stats and the log say so, and the step table keeps the start as a validation row."""
    steps = scripted(monkeypatch, [0.9, 0.3, 0.5], k=VALIDATION["k"])
    prompts = write_reasoning(tmp_path / "prompts.parquet", 16, targets=[GRPO_TARGET], seed=3)
    validation = {k: v for k, v in VALIDATION.items() if k != "metric"}
    result = run_grpo(tmp_path, {"max_steps": 2, "rollout_batch_size": 16, "checkpoint": {"every_steps": 1},
                                 "validation": {**validation, "every_steps": 1}}, prompts, reason, synthetic, tracking_uri)
    assert steps == [0, 1, 2]
    stats = result["stats"]
    assert (stats["validation"]["kept_step"], stats["validation"]["kept_value"]) == (0, 0.9)
    assert (stats["validation"]["best_step"], stats["validation"]["best_value"]) == (2, 0.5)
    assert [r["step"] for r in stats["steps"]] == [0, 1, 2] and stats["summary"]["logged_steps"] == 2
    assert not any(changed(weights(reason["outputs"]["model"]), weights(result["outputs"]["model"])).values())
    assert artifacts.read_model_record(result["outputs"]["model"]).stage == "grpo"
    assert "no validation during training scored above the model it started from" in caplog.text


def test_grpo_beam_rank_mode_trains_on_catalog_sids_and_reports_every_step(grpo_beam, reason, synthetic):
    stats = grpo_beam["stats"]
    assert stats["reward_mode"] == "beam_rank" and stats["rollout_engine"] == "hf"
    table = stats["steps"]
    assert [row["step"] for row in table] == [1, 2, 3]
    for row in table:
        assert row["valid_sid_rate"] == 1.0 and row["well_formed_rate"] == 1.0  # the trie's guarantee
        assert row["rank_reward"] is not None and row["prefix_reward"] is None
        assert 0 <= row["hit_rate"] <= row["beam_hit_rate"] <= 1 and 0 <= row["reasoning_closed_rate"] <= 1
        assert row["reward"] == pytest.approx(row["rank_reward"] + 0.1)
        assert row["reasoning_tokens"] is not None and row["kl"] is not None
    assert stats["summary"]["beam_hit_rate_last"] is not None and stats["summary"]["valid_sid_rate_last"] == 1.0
    assert stats["validation"] is None and all(row["validation_ndcg"] is None for row in table)  # off
    moved = changed(weights(reason["outputs"]["model"]), weights(grpo_beam["outputs"]["model"]))
    assert all(moved.values())
    assert_model_folder(grpo_beam["outputs"]["model"], sid_tokens(synthetic))


def test_new_token_warmup_trains_only_the_sid_rows(tmp_path, synthetic, tiny_backbone, tracking_uri):
    run = run_stage(ALIGN, {
        "backbone": {"uri": str(tiny_backbone), "new_token_warmup_steps": 2}, "learning_rate": 1e-2,
        "warmup_steps": 0, "weight_decay": 0.1, "max_steps": 2, "global_batch_size": 8, "per_device_batch_size": 8,
        "max_length": 512, "eval_strategy": "no", "early_stopping_patience": None,
        "checkpoint": {"every_steps": 10},
    }, tmp_path, align_inputs(synthetic), tracking_uri)
    before, after = weights(tiny_backbone), weights(run["outputs"]["model"])
    old_rows = before["model.embed_tokens.weight"].shape[0]
    embedding = after["model.embed_tokens.weight"]
    assert torch.equal(embedding[:old_rows], before["model.embed_tokens.weight"])
    assert embedding.shape[0] == old_rows + len(sid_tokens(synthetic))
    for name, tensor in before.items():
        if name != "model.embed_tokens.weight":
            assert torch.equal(after[name], tensor), name
    # the new rows moved away from their mean initialisation (same seed -> same initial rows)
    from components.common.training.backbone import extend_with_sids

    extend_with_sids(tiny_backbone, tmp_path / "base", sid_tokens(synthetic), tmp_path / "dl", seed=42)
    initial = weights(tmp_path / "base")["model.embed_tokens.weight"]
    assert not torch.equal(embedding[old_rows:], initial[old_rows:])


# ----------------------------------------------------------------------------------------------
# bad input: refused before any training
# ----------------------------------------------------------------------------------------------


def test_bf16_on_a_cpu_is_refused(tmp_path, synthetic, tiny_backbone, tracking_uri):
    with pytest.raises(ConfigError, match="align_sft.bf16: bf16 was requested but no GPU is visible"):
        run_stage(ALIGN, {"backbone": {"uri": str(tiny_backbone)}, "bf16": True}, tmp_path, align_inputs(synthetic),
                  tracking_uri)


def test_missing_backbone_is_refused(tmp_path, synthetic, tracking_uri):
    with pytest.raises(ConfigError, match=r"align_sft.backbone.uri: .*/nowhere: model folder does not exist"):
        run_stage(ALIGN, {"backbone": {"uri": str(tmp_path / "nowhere")}}, tmp_path, align_inputs(synthetic),
                  tracking_uri)


def test_backbone_that_is_not_a_causal_lm_is_refused(tmp_path, synthetic, tracking_uri):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ConfigError, match="model_type 'vit' is not a causal language model"):
        run_stage(ALIGN, {"backbone": {"uri": str(folder)}}, tmp_path, align_inputs(synthetic), tracking_uri)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        run_stage(ALIGN, {"backbone": {"uri": str(tmp_path / "empty")}}, tmp_path, align_inputs(synthetic),
                  tracking_uri)


def test_reasoning_model_without_the_sid_tokens_is_refused(tmp_path, synthetic, tiny_backbone, tracking_uri):
    with pytest.raises(InputError, match=r"input sft_model .*: lacks 8 SID token"):
        run_stage(REASON, {"eval_strategy": "no", "early_stopping_patience": None, "eval_fraction": 0}, tmp_path,
                  {"sft_model": str(tiny_backbone), "reasoning": synthetic["reasoning"],
                   "sid_map": synthetic["sid_map"]}, tracking_uri)


def test_grpo_checks_engine_and_reward_levels(tmp_path, synthetic, tiny_backbone, tracking_uri):
    inputs = {"reasoning_model": str(tiny_backbone), "reasoning": synthetic["reasoning"],
              "sid_map": synthetic["sid_map"]}
    with pytest.raises(ConfigError, match="grpo.rollout.engine: vllm needs a GPU"):
        run_stage(GRPO, {"rollout": {"engine": "vllm"}}, tmp_path, inputs, tracking_uri)
    with pytest.raises(ConfigError, match="grpo.reward.level_rewards: 2 values but the sid_map SIDs have 3 levels"):
        run_stage(GRPO, {"reward": {"level_rewards": [0.5, 1.0]}}, tmp_path, inputs, tracking_uri)


def test_ranking_validation_without_the_valid_split_is_refused(tmp_path, synthetic, align, tracking_uri):
    inputs = {"sft_model": align["outputs"]["model"], "reasoning": synthetic["reasoning"],
              "sid_map": synthetic["sid_map"]}
    with pytest.raises(ConfigError, match=r"reason_sft.validation.metric: 'ndcg' decodes the valid split, but no "
                                          r"samples input was given \(--samples\)"):
        run_stage(REASON, {"validation": VALIDATION}, tmp_path, inputs, tracking_uri)
    with pytest.raises(ConfigError, match=r"grpo.validation.every_steps: .* no samples input was given"):
        run_stage(GRPO, {}, tmp_path, {"reasoning_model": align["outputs"]["model"],
                                       "reasoning": synthetic["reasoning"], "sid_map": synthetic["sid_map"]},
                  tracking_uri)
