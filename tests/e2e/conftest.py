"""The demo DAG run through kfp's local runner, once per session: `test_pipeline_run` checks that
run, and `test_scheduled_retraining` uses it as the first of its two scheduled runs (a run takes
~2.5 min on a 2-core machine: each of its eleven tasks is a fresh process, and importing TRL and
transformers alone takes ~10 s). Under pytest-xdist the package runs on one worker (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import cli

#: The demo profile, cut to the fewest steps that still exercise every code path.
FAST = [
    "ingest.preprocess.min_window_items=50",
    "sid_quantize.rq_vae.epochs=60",
    "teacher_corpus.enrichment.users=60",
    "align_sft.max_steps=6", "align_sft.eval_steps=3", "align_sft.checkpoint.every_steps=3",
    "reason_sft.max_steps=4", "reason_sft.eval_steps=2", "reason_sft.checkpoint.every_steps=2",
    "grpo.max_steps=2", "grpo.max_prompts=16", "grpo.checkpoint.every_steps=1",
    "align_sft.validation.max_samples=32", "reason_sft.validation.max_samples=16", "grpo.validation.max_samples=16",
    "evaluate.max_examples=8", "evaluate.max_reasoning_tokens=16", "evaluate.bootstrap_samples=200",
    "baselines.sasrec.epochs=3", "baselines.sasrec_ce.epochs=2", "recommend.max_users=8",
]

#: The registered model of the session's runs.
MODEL = "sidreasoner-e2e"


def run_demo(out: Path, source: Path, sets: list[str]) -> dict:
    """``sidreasoner run --config demo`` with ``sets`` on the catalog at ``source``; its run.json."""
    sets = [f"ingest.source={source}", *sets]
    assert cli.main(["run", "--config", "demo", "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The folder of the session's runs: their MLflow store (registry included) and stage cache."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def shared_settings(demo_store) -> list[str]:
    """What consecutive scheduled runs share: MLflow store, registered model name and cache."""
    return [f"tracking.uri=sqlite:///{demo_store / 'mlflow.db'}", f"retrain.registered_model={MODEL}",
            f"storage.cache_uri={demo_store / 'cache'}"]


@pytest.fixture(scope="session")
def first_run(demo_store, shared_settings, demo_data) -> dict:
    """A first scheduled run on the demo catalog: nothing registered yet."""
    return run_demo(demo_store / "run1", demo_data, [*FAST, *shared_settings])
