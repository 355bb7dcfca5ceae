"""Fixtures of the training-stage tests: synthetic inputs, a tiny backbone, stage contexts.

Tiny models train fastest on one thread, and much faster than on two when the machine's cores
are shared (thread spin-waiting): every test here and the subprocesses it starts use one.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from components.common import storage  # noqa: E402
from components.common.stage import StageContext  # noqa: E402
from tests.training.synthetic import write_synthetic  # noqa: E402

torch.set_num_threads(1)

#: Settings every CPU test run of a training stage needs (STACK.md section 3 pitfalls).
CPU = {"bf16": False, "gradient_checkpointing": False, "logging_steps": 1}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, str]:
    """items, samples, sid_map, corpus and reasoning Parquet files of a 16-item catalog."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, synthetic) -> Path:
    """A tiny Qwen3 backbone (no SID tokens yet) with a tokenizer trained on the synthetic text.

    Hidden size 128: the smallest that learns the reasoning format in a few dozen steps.
    """
    from components.common.training.backbone import build_tiny

    return build_tiny(tmp_path_factory.mktemp("backbone") / "tiny", synthetic["items"], synthetic["corpus"],
                      seed=0, vocab_size=400, hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One sqlite MLflow store for the session (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(params=["local", "gcs"])
def remote(request, tmp_path) -> str:
    """A checkpoint store: a local folder, then a prefix of a bucket on the GCS emulator."""
    if request.param == "local":
        return str(tmp_path / "remote")
    return storage.join(request.getfixturevalue("gcs_bucket"), "checkpoints", "align_sft")


def context(tmp: Path, tracking_uri: str, run_key: str = "local-test") -> StageContext:
    """A stage context with a cache under ``tmp``."""
    return StageContext(run_key=run_key, pipeline_name="test", profile="test", config_hash="0" * 16,
                        tracking_uri=tracking_uri, experiment="test", artifact_location=str(tmp / "mlartifacts"),
                        cache_uri=str(tmp / "cache"), seed=42, final_stage="grpo")


def weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The saved tensors of a model folder."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def scripted(monkeypatch, values: list[float], k: int = 10) -> list[int]:
    """Make every validation return the next of ``values`` as HR@k and NDCG@k; returns the steps
    it ran at."""
    steps: list[int] = []

    def run(self, trainer):
        steps.append(trainer.state.global_step)
        value = values[len(steps) - 1]
        return {f"hr_at_{k}": value, f"ndcg_at_{k}": value, "validation_rows": 3.0, "validation_seconds": 0.0}

    from components.common.training.validation import SidValidator

    monkeypatch.setattr(SidValidator, "run", run)
    return steps
