"""Validation by what evaluation measures (components/common/training/validation.py).

* the valid sample: seeded order, prefixes, bad rows refused;
* the validator scores the live model exactly as evaluation scores the saved one (both modes);
* the engines keep the checkpoint of the best validation metric: SFT (with early stopping on the
  same metric) and GRPO (periodic validation), with scripted metrics so that an early step is
  the best; the kept weights are that checkpoint's, the log history has the curve.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from components.common import artifacts, prompts, sid
from components.common.decoding import decode_all
from components.common.decoding_config import DecoderSettings
from components.common.errors import InputError
from components.common.training import grpo, launch, sft
from components.common.training.settings import GRPOSettings, SFTSettings, SFTValidation, ValidationConfig
from components.common.training.validation import (
    SidValidator,
    ValidationSample,
    valid_rows,
    validation_sample,
    validation_summary,
)
from components.evaluate.metrics import row_gains, target_rank
from components.grpo import report
from components.grpo.config import RewardConfig
from tests.tiny_sid_model import build_sid_model
from tests.training.conftest import scripted, weights

CODEBOOKS = (4, 5, 6)
RECORD = artifacts.ModelRecord(sid_space=None, sid_map_digest=None, stage="test")


@pytest.fixture(scope="module")
def sid_setup(tmp_path_factory) -> dict:
    """A tiny random model that knows the SID tokens, a 40-SID catalog and 12 histories."""
    model_dir = build_sid_model(tmp_path_factory.mktemp("validation") / "model", CODEBOOKS, seed=3)
    rng = random.Random(7)
    catalog = [sid.format_sid(c) for c in sorted({tuple(rng.randrange(n) for n in CODEBOOKS) for _ in range(40)})]
    histories = [[rng.choice(catalog) for _ in range(rng.randrange(1, 5))] for _ in range(12)]
    return {"model_dir": model_dir, "catalog": catalog, "histories": histories,
            "tokens": sid.vocabulary(CODEBOOKS)}


# ----------------------------------------------------------------------------------------------
# The valid sample
# ----------------------------------------------------------------------------------------------


def test_valid_rows_are_a_seeded_order_whose_prefixes_are_the_samples(synthetic):
    catalog = artifacts.read_catalog(synthetic["sid_map"])
    rows = valid_rows(synthetic["samples"], catalog, seed=42)
    valid = [s for s in artifacts.read_samples(synthetic["samples"]).split("valid")]
    assert sorted(t for _, t in rows) == sorted(catalog.sid_of[s.target] for s in valid)
    assert valid_rows(synthetic["samples"], catalog, seed=42) == rows
    one = validation_sample(rows, catalog, ValidationConfig(max_samples=1))
    assert (one.histories, one.targets) == ([rows[0][0]], [rows[0][1]])
    assert one.catalog_sids == sorted(catalog.sids)
    every = validation_sample(rows, catalog, ValidationConfig(max_samples=None))
    assert len(every.targets) == len(valid)


def test_valid_rows_refuse_an_empty_valid_split(tmp_path, synthetic):
    import pyarrow as pa

    from components.common import storage

    table = storage.read_parquet(synthetic["samples"])
    rows = [dict(r, split="train") if r["split"] == "valid" else r for r in table.to_pylist()]
    storage.write_parquet(pa.Table.from_pylist(rows, schema=table.schema), str(tmp_path / "none.parquet"))
    with pytest.raises(InputError, match="none.parquet: no rows in the valid split"):
        valid_rows(str(tmp_path / "none.parquet"), artifacts.read_catalog(synthetic["sid_map"]), seed=0)


def test_validation_summary_reads_the_curve_and_the_kept_step():
    settings = ValidationConfig(metric="hr", k=5, mode="thinking")
    history = [{"loss": 2.0, "step": 2}, {"eval_hr_at_5": 0.25, "eval_ndcg_at_5": 0.2, "eval_validation_rows": 8,
                                          "step": 2},
               {"eval_hr_at_5": 0.5, "eval_ndcg_at_5": 0.3, "eval_validation_rows": 8, "step": 4},
               {"eval_hr_at_5": 0.375, "eval_ndcg_at_5": 0.3, "eval_validation_rows": 8, "step": 6}]
    result = {"global_step": 6, "best_global_step": 4, "best_metric": 0.5}
    summary = validation_summary(history, settings, result, restored_best=True)
    assert [row["step"] for row in summary["curve"]] == [2, 4, 6]
    assert (summary["metric"], summary["mode"], summary["rows"]) == ("hr_at_5", "thinking", 8)
    assert (summary["kept_step"], summary["kept_value"], summary["best_step"]) == (4, 0.5, 4)
    last = validation_summary(history, settings, result, restored_best=False)
    assert (last["kept_step"], last["kept_value"]) == (6, 0.375)


# ----------------------------------------------------------------------------------------------
# The validator = evaluation's decoder on the live model
# ----------------------------------------------------------------------------------------------


class LiveTrainer:
    """What the validator reads of a Trainer, for one process (the engines pass the real one)."""

    def __init__(self, model):
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=True)
        self.model = self.model_wrapped = model
        self.state = type("State", (), {"global_step": 7})()

    def compute_loss_context_manager(self):
        return contextlib.nullcontext()  # no mixed precision on a CPU


@pytest.mark.parametrize("mode", ["direct", "thinking"])
def test_the_validator_scores_the_live_model_as_evaluation_scores_the_saved_one(sid_setup, tmp_path, mode):
    from components.common.modeling import load_causal_lm

    settings = ValidationConfig(mode=mode, k=5, beam_width=6, batch_size=4, reasoning_batch_size=3,
                                max_reasoning_tokens=6, max_samples=None)
    decoder = DecoderSettings(beam_width=6, batch_size=4, reasoning_batch_size=3, max_reasoning_tokens=6, device="cpu")
    histories, catalog = sid_setup["histories"], sid_setup["catalog"]
    decoded = decode_all(str(sid_setup["model_dir"]), catalog, histories, [mode], decoder, shards=1, seed=0,
                         workdir=tmp_path)[mode]
    # targets: the rank-r SID for rows 0..5 (r = row), a SID outside the list for the others
    targets = [row.sids[i] if i < 6 else next(s for s in catalog if s not in row.sids)
               for i, row in enumerate(decoded)]
    # what evaluation would score these rows (NaN: target not ranked)
    expected = row_gains(np.array([target_rank(row.sids, t) for row, t in zip(decoded, targets)], float), 5)

    model, tokenizer = load_causal_lm(sid_setup["model_dir"])
    model.train()  # as during training: the validator decodes in eval mode and puts it back
    validator = SidValidator(settings, ValidationSample(histories=histories, targets=targets, catalog_sids=catalog),
                             tokenizer)
    metrics = validator.run(LiveTrainer(model))
    assert model.training
    assert metrics["validation_rows"] == 12
    assert metrics["hr_at_5"] == pytest.approx(expected["hr"].mean()) == 5 / 12
    assert metrics["ndcg_at_5"] == pytest.approx(expected["ndcg"].mean())
    if mode == "thinking":
        assert metrics["reasoning_closed_rate"] == pytest.approx(sum(bool(d.reasoning_closed) for d in decoded) / 12)
        assert metrics["reasoning_tokens"] == pytest.approx(sum(d.reasoning_tokens for d in decoded) / 12)
    else:
        assert "reasoning_closed_rate" not in metrics
    assert validator.run(LiveTrainer(model)) == {**metrics, "validation_seconds": pytest.approx(
        metrics["validation_seconds"], abs=60)}  # deterministic: the same numbers again


# ----------------------------------------------------------------------------------------------
# The engines keep the best validated checkpoint
# ----------------------------------------------------------------------------------------------


def job_of(root: Path, entry: str, payload) -> launch.TrainJob:
    return launch.TrainJob(entry=entry, stage="test", payload=payload.model_dump(mode="json"),
                           output_dir=str(root / "ckpt"), final_dir=str(root / "final"),
                           checkpoint_uri=str(root / "remote"), checkpoint_every=1000, keep_checkpoints=1)


def sample_of(setup: dict) -> ValidationSample:
    return ValidationSample(histories=setup["histories"][:3], targets=setup["catalog"][:3],
                            catalog_sids=setup["catalog"])


def test_sft_keeps_the_checkpoint_of_the_best_validation_ndcg_and_stops_on_it(sid_setup, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sid_setup["model_dir"])
    rows = list(zip(sid_setup["histories"], sid_setup["catalog"][:12], strict=True))
    sft.encode_direct(tokenizer, rows, False, 256).dataset().save_to_disk(str(tmp_path / "train"))
    sft.encode_direct(tokenizer, rows[:4], False, 256).dataset().save_to_disk(str(tmp_path / "eval"))
    settings = SFTSettings(bf16=False, gradient_checkpointing=False, learning_rate=1e-2, max_steps=20,
                           global_batch_size=4, per_device_batch_size=4, eval_strategy="steps", eval_steps=2,
                           early_stopping_patience=2, logging_steps=1, validation=SFTValidation(metric="ndcg"))
    steps = scripted(monkeypatch, [0.2, 0.7, 0.1, 0.7, 0.9])
    job = job_of(tmp_path, sft.ENTRY, sft.SFTPayload(
        settings=settings, base_model=str(sid_setup["model_dir"]), train_data=str(tmp_path / "train"),
        eval_data=str(tmp_path / "eval"), gradient_accumulation_steps=1, record=RECORD,
        sid_vocab=sid_setup["tokens"], validation=sample_of(sid_setup)))
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    # 0.7 at step 4 is the best; 0.1 and 0.7 (not better) after it: patience 2 stops at step 8
    assert steps == [2, 4, 6, 8] and result["global_step"] == 8
    assert (result["best_global_step"], result["best_metric"]) == (4, 0.7)
    evals = [r for r in result["log_history"] if "eval_ndcg_at_10" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8] and all("eval_loss" in r for r in evals)
    kept, last = weights(tmp_path / "ckpt" / "checkpoint-4"), weights(tmp_path / "final")
    assert all(torch.equal(kept[name], last[name]) for name in kept)
    assert not all(torch.equal(t, last[n]) for n, t in weights(tmp_path / "ckpt" / "checkpoint-8").items())
    summary = sft.summarize(result)
    assert (summary["best_metric"], summary["best_global_step"]) == (0.7, 4)


def grpo_validation_job(sid_setup, tmp_path: Path) -> tuple[launch.TrainJob, GRPOSettings]:
    """Six GRPO steps on the tiny SID model, validated every two steps and at the start."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sid_setup["model_dir"])
    histories, catalog = sid_setup["histories"], sid_setup["catalog"]
    # beam rollouts over a 4-SID catalog: every group ranks the target somewhere, rewards vary, weights move
    Dataset.from_dict({"prompt": [prompts.render_prompt(tokenizer, prompts.reasoning_messages(h)) for h in histories],
                       "target_sid": [catalog[i % 4] for i in range(12)]}).save_to_disk(str(tmp_path / "prompts"))
    settings = GRPOSettings(bf16=False, gradient_checkpointing=False, learning_rate=1e-2, max_steps=6,
                            num_generations=8, rollout_batch_size=16, per_device_batch_size=16, logging_steps=1,
                            rollout={"engine": "hf", "max_completion_length": 16},
                            validation={"every_steps": 2, "max_reasoning_tokens": 8})
    job = job_of(tmp_path, grpo.ENTRY, grpo.GRPOPayload(
        settings=settings, base_model=str(sid_setup["model_dir"]), prompts=str(tmp_path / "prompts"),
        gradient_accumulation_steps=1, use_vllm=False, rewards="components.grpo.rewards:for_training",
        reward_args={"reward": RewardConfig(mode="beam_rank", beam_width=4).model_dump(mode="json"),
                     "catalog": catalog[:4]},
        record=RECORD, sid_vocab=sid_setup["tokens"], validation=sample_of(sid_setup)))
    return job, settings


def test_grpo_validates_every_n_steps_and_keeps_the_best_model(sid_setup, tmp_path, monkeypatch):
    job, settings = grpo_validation_job(sid_setup, tmp_path)
    steps = scripted(monkeypatch, [0.2, 0.3, 0.8, 0.5])
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    assert steps == [0, 2, 4, 6] and result["global_step"] == 6 and result["kept_start"] is False
    assert (result["best_global_step"], result["best_metric"]) == (4, 0.8)
    kept, last = weights(tmp_path / "ckpt" / "checkpoint-4"), weights(tmp_path / "final")
    assert all(torch.equal(kept[name], last[name]) for name in kept)
    assert not all(torch.equal(t, last[n]) for n, t in weights(tmp_path / "ckpt" / "checkpoint-6").items())
    table = report.step_table(result["log_history"], settings.validation)
    assert [r["step"] for r in table] == [0, 1, 2, 3, 4, 5, 6]
    assert [r["validation_ndcg"] for r in table] == [0.2, None, 0.3, None, 0.8, None, 0.5]
    assert table[0]["reward"] is None and all(r["reward"] is not None for r in table[1:])  # training records whole
    assert report.summarize(table)["logged_steps"] == 6
    summary = validation_summary(result["log_history"], settings.validation, result, restored_best=True)
    assert (summary["kept_step"], summary["kept_value"]) == (4, 0.8)


@pytest.mark.parametrize("at_start", [0.9, 0.8], ids=["start-above", "tie"])
def test_grpo_keeps_the_starting_model_when_no_validation_beats_it(sid_setup, tmp_path, monkeypatch, at_start):
    """RL that never validated above where it started is not shipped: the stage's model is the
    starting model's weights, with GRPO's record and SID vocabulary. A step that only ties the
    start does not replace it."""
    job, settings = grpo_validation_job(sid_setup, tmp_path)
    steps = scripted(monkeypatch, [at_start, 0.3, 0.8, 0.5])
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    assert steps == [0, 2, 4, 6] and result["kept_start"] is True
    start, final = weights(sid_setup["model_dir"]), weights(tmp_path / "final")
    assert start.keys() == final.keys() and all(torch.equal(start[n], final[n]) for n in start)
    assert not all(torch.equal(t, final[n]) for n, t in weights(tmp_path / "ckpt" / "checkpoint-4").items())
    assert artifacts.read_model_record(str(tmp_path / "final")) == RECORD
    assert not (tmp_path / "final" / "training_args.bin").exists()
    summary = validation_summary(result["log_history"], settings.validation, result, restored_best=True)
    assert (summary["kept_step"], summary["kept_value"], summary["best_step"]) == (0, at_start, 4)


def test_grpo_without_validate_start_keeps_its_own_best(sid_setup, tmp_path, monkeypatch):
    job, settings = grpo_validation_job(sid_setup, tmp_path)
    settings = settings.model_copy(update={"validation": settings.validation.model_copy(update={"validate_start": False})})
    job = job.model_copy(update={"payload": {**job.payload, "settings": settings.model_dump(mode="json")}})
    steps = scripted(monkeypatch, [0.3, 0.8, 0.5])
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    assert steps == [2, 4, 6] and result["kept_start"] is False and result["best_global_step"] == 4


def _validate_as_rank(rank: int, world: int, port: int, model_dir: str, sample: dict, settings: dict, out: str) -> None:
    """One process of a gloo process group: the validator over this process's share of the rows."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from components.common.modeling import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    validator = SidValidator(ValidationConfig.model_validate(settings), ValidationSample.model_validate(sample),
                             tokenizer)
    trainer = LiveTrainer(model)
    assert trainer.accelerator.num_processes == world
    Path(out, f"rank{rank}.json").write_text(json.dumps(validator.run(trainer)))
    # leave the group together: a rank exiting while the other's gloo transport still talks to it
    # can abort that one (SIGABRT at exit)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_processes_decode_their_share_and_agree_on_the_metrics(sid_setup, tmp_path):
    """Two processes (gloo, as DDP on CPUs): rows split by rank, counts summed: both get the
    single-process metrics."""
    import socket

    import torch.multiprocessing as mp

    from components.common.modeling import load_causal_lm

    settings = ValidationConfig(mode="direct", k=5, beam_width=6, batch_size=4, max_samples=None)
    histories, catalog = sid_setup["histories"][:7], sid_setup["catalog"]
    decoded = decode_all(str(sid_setup["model_dir"]), catalog, histories, ["direct"], DecoderSettings(
        beam_width=6, device="cpu"), shards=1, seed=0, workdir=tmp_path)["direct"]
    # rank r for row r < 6, rows 0..4 hit at k=5; row 6: a SID outside its list
    targets = [row.sids[i] if i < 6 else next(s for s in catalog if s not in row.sids) for i, row in enumerate(decoded)]
    sample = ValidationSample(histories=histories, targets=targets, catalog_sids=catalog)
    model, tokenizer = load_causal_lm(sid_setup["model_dir"])
    alone = SidValidator(settings, sample, tokenizer).run(LiveTrainer(model))
    assert alone["hr_at_5"] == pytest.approx(5 / 7)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_validate_as_rank, args=(2, port, str(sid_setup["model_dir"]), sample.model_dump(),
                                      settings.model_dump(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        metrics = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert metrics["validation_rows"] == 7
        for key in ("hr_at_5", "ndcg_at_5"):
            assert metrics[key] == pytest.approx(alone[key]), (rank, key)
