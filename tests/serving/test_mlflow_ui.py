"""MLflow's own UI, in a real headless Chromium against a real ``mlflow server``: a reviewer walks
registered version -> logged model -> its run -> the datasets it was trained on, without our CLI,
and the experiment opens as model training.

The stage run is made as a pipeline makes it (``lineage.stage_run``, ``StageRun.log_dataset`` of
each input, the training library's ``log_model``); Chromium renders each page (``--dump-dom``
after the app's requests settle) and the test reads the text a person would see. Skipped where no
Chromium is installed (``.ci/run`` installs Debian's ``chromium`` when it can).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import pytest

from components.common import lineage, registry, storage
from components.common.registry import RetrainConfig
from components.common.training.models import log_model

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
NAME = "ui-walk"


def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip(f"no headless browser installed ({', '.join(BROWSERS)}): apt-get install chromium")
    return found


def page_text(url: str, tmp_path) -> str:
    """What a person sees on ``url`` once MLflow's app has loaded its data."""
    result = subprocess.run([browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--dump-dom",
                             url], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))  # &nbsp; is a space too


@pytest.fixture(scope="module")
def walk(mlflow_server, tmp_path_factory) -> dict:
    """A grpo stage run under a pipeline run: its inputs logged, its model logged by the training
    library (external, metrics linked to the training data), then registered at the alias."""
    root = tmp_path_factory.mktemp("ui")
    inputs = {}
    for name in ("reasoning", "sid_map", "reasoning_model"):
        inputs[name] = storage.write_text(root / f"{name}.txt", f"the {name} artifact")
    with lineage.stage_run(tracking_uri=mlflow_server, experiment=NAME, artifact_location=None, run_key="local-ui",
                           stage="grpo", parent_tags={}, parent_name="ui-walk-local-ui", close_parent=True) as run:
        for name, digest in inputs.items():
            run.log_dataset(name, str(root / f"{name}.txt"), digest, context="input")
        model_id = log_model(run_id=run.run_id, name="grpo", model_dir=None, model_uri=str(root / "model"),
                             model_digest="sha256:" + "ab" * 32, lineage=inputs, params={"stage": "grpo"},
                             metrics={"global_step": 16, "reward_last": 0.25})
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    registry.register(RetrainConfig(registered_model=NAME), logged_model_id=model_id, tags={})
    experiment = mlflow.MlflowClient().get_experiment_by_name(NAME)
    return {"url": mlflow_server, "experiment": experiment.experiment_id, "run": run.run_id, "model": model_id,
            "reasoning": inputs["reasoning"]}


def test_the_experiment_is_model_training(walk, tmp_path):
    import mlflow

    experiment = mlflow.MlflowClient(walk["url"]).get_experiment(walk["experiment"])
    assert experiment.tags[lineage.TAG_EXPERIMENT_KIND] == "custom_model_development"
    # MLflow 3.17's UI opens an experiment in the workflow the URL (or the user's last choice) names
    text = page_text(f"{walk['url']}/#/experiments/{walk['experiment']}?workflowType=machine_learning", tmp_path)
    assert "Runs Models" in text and "ui-walk-local-ui" in text and "Token Usage" not in text


def test_the_registered_version_names_its_logged_model_and_run(walk, tmp_path):
    text = page_text(f"{walk['url']}/#/models/{NAME}/versions/1", tmp_path)
    assert "Source Run : grpo" in text and "Source Model : grpo" in text and "@ production" in text


def test_the_logged_model_shows_its_run_metrics_and_the_datasets_it_was_trained_on(walk, tmp_path):
    text = page_text(f"{walk['url']}/#/experiments/{walk['experiment']}/models/{walk['model']}", tmp_path)
    short = walk["reasoning"].split(":", 1)[1][:32]
    assert f"global_step reasoning (#{short}) grpo 16" in text  # metric, dataset, source run, value
    assert f"Source run grpo Source run ID {walk['run']}" in text
    assert f"Datasets used reasoning (#{short})" in text
    assert f"Model versions {NAME} v1" in text


def test_the_run_lists_its_logged_model_and_its_datasets(walk, tmp_path):
    text = page_text(f"{walk['url']}/#/experiments/{walk['experiment']}/runs/{walk['run']}", tmp_path)
    assert re.search(r"Logged models \(1\) .* grpo Ready", text)
    assert re.search(r"Datasets (reasoning|sid_map|reasoning_model) \([0-9a-f]{32}\) input \+2", text)
    assert f"Registered models {NAME} v1" in text
