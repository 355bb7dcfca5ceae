"""Preemption: a training stage killed midway (SIGKILL) resumes from its last complete published
checkpoint when restarted, and ends exactly where an uninterrupted run ends (same step counter,
optimizer state and data position: identical weights)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from components.align_sft import STAGE as ALIGN
from components.common import storage
from components.common.config import parse_section
from components.common.training import checkpoints as published
from tests.training.conftest import context, weights

MAX_STEPS = 40


def profile(tmp: Path, checkpoints: str | None) -> dict:
    """The job's profile; checkpoints under ``checkpoints``, or (None) under the cache, keyed by the job."""
    return {
        "run": {"name": "resume-test", "seed": 42},
        "tracking": {"experiment": "resume"},
        "storage": {"cache_uri": str(tmp / "cache")},
        "align_sft": {
            "backbone": {"tiny": {"vocab_size": 400}}, "learning_rate": 3e-3, "warmup_steps": 0,
            "max_steps": MAX_STEPS, "global_batch_size": 8, "per_device_batch_size": 4, "max_length": 512,
            "eval_strategy": "no", "early_stopping_patience": None, "bf16": False, "gradient_checkpointing": False,
            "logging_steps": 1,
            "checkpoint": {"every_steps": 5, "keep": 2, "uri": checkpoints, "local_dir": str(tmp / "scratch")},
        },
    }


def cli(config: Path, out: Path, tracking_uri: str, synthetic: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "components.align_sft", "--config", str(config), "--out", str(out),
            "--tracking-uri", tracking_uri, "--items", synthetic["items"], "--samples", synthetic["samples"],
            "--sid-map", synthetic["sid_map"], "--corpus", synthetic["corpus"]]


def wait_for_checkpoint(proc: subprocess.Popen, stage_root: Path, timeout: float) -> str:
    """The job folder under ``stage_root`` once it holds a complete checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in stage_root.glob("*"):
            if published.complete(str(job)):
                return str(job)
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before publishing a checkpoint"
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint under {stage_root} after {timeout}s")


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, synthetic, tracking_uri):
    """Re-running the same command resumes: checkpoints are keyed by what the job is, not by
    the (timestamped) run of the CLI."""
    config = tmp_path / "profile.yaml"
    config.write_text(yaml.safe_dump(profile(tmp_path, None)))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(cli(config, out, tracking_uri, synthetic), env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        checkpoints = wait_for_checkpoint(first, tmp_path / "cache" / "checkpoints" / "align_sft", timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
    assert first.returncode == -signal.SIGKILL
    saved = published.complete(checkpoints)
    assert saved and saved[-1] < MAX_STEPS and not (out / "model").exists()

    second = subprocess.run(cli(config, out, tracking_uri, synthetic), env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from checkpoint {saved[-1]} of {checkpoints}" in second.stderr
    stats = storage.read_json(out / "stats.json")
    assert stats["resumed_from_step"] == saved[-1]
    assert stats["global_step"] == MAX_STEPS

    # an uninterrupted run of the same job ends with the same weights
    values = profile(tmp_path, str(tmp_path / "other-checkpoints"))["align_sft"]
    values["checkpoint"]["local_dir"] = str(tmp_path / "scratch-2")
    cfg = parse_section(ALIGN.config, values, "align_sft")
    reference = {"model": str(tmp_path / "ref" / "model"), "stats": str(tmp_path / "ref" / "stats.json")}
    inputs = {k: synthetic[k] for k in ("items", "samples", "sid_map", "corpus")}
    ALIGN.execute(cfg, context(tmp_path, tracking_uri), inputs, reference)
    resumed, uninterrupted = weights(out / "model"), weights(reference["model"])
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name
    assert storage.read_json(reference["stats"])["last_train_loss"] == pytest.approx(stats["last_train_loss"], abs=1e-6)
