"""The production model in the MLflow registry, and the promotion rule."""

from __future__ import annotations

import pytest

from components.common import registry
from components.common.registry import PreviousModel, RetrainConfig
from components.promote.stage import decide

CFG = RetrainConfig(registered_model="m", metric="ndcg", k=10, mode="thinking", split="test", min_improvement=0.01)


def _prev(value, metric=CFG.metric_name):
    return PreviousModel(found=True, reason="", version="3", metric=metric, metric_value=value)


@pytest.mark.parametrize("previous, value, promoted, why", [
    (PreviousModel(found=False, reason="none"), 0.05, True, "first model of m"),
    (_prev(0.10), 0.12, True, "beats production version 3"),
    (_prev(0.10), 0.105, False,
     "does not beat production version 3 (0.1000 as recorded on its own run's rows) by more than 0.01"),
    (_prev(0.10), 0.09, False, "production kept"),
    (_prev(0.10, metric="hr@10/thinking/test"), 0.5, False, "not comparable"),
])
def test_promotion_rule(previous, value, promoted, why):
    ok, reason = decide(CFG, value, previous)
    assert ok is promoted and why in reason


@pytest.mark.parametrize("previous, value, on_rows, promoted, why", [
    # the production model re-scored on this run's rows decides, not its recorded score
    (_prev(0.30), 0.12, 0.10, True, "beats production version 3 (0.1000 on this run's rows) by +0.0200"),
    (_prev(0.05), 0.12, 0.115, False, "does not beat production version 3 (0.1150 on this run's rows)"),
    # and makes a recorded score of another metric irrelevant
    (_prev(0.10, metric="hr@10/thinking/test"), 0.5, 0.2, True, "on this run's rows"),
    (PreviousModel(found=False, reason="none"), 0.05, None, True, "first model of m"),
])
def test_promotion_compares_on_the_same_rows_when_evaluate_scored_production(previous, value, on_rows, promoted,
                                                                             why):
    ok, reason = decide(CFG, value, previous, on_rows)
    assert ok is promoted and why in reason


def test_recorded_scores_say_so():
    assert "as recorded on its own run's rows" in decide(CFG, 0.2, _prev(0.1))[1]


def test_find_previous_through_the_registry(mlflow_server, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    cfg = RetrainConfig(registered_model="registry-test")
    assert registry.find_previous(cfg).found is False
    paths = {name: tmp_path / name for name in ("model", "sid_map", "codebooks")}
    for path in paths.values():
        path.write_text("x")
    mlflow.set_experiment("registry-test")
    with mlflow.start_run() as run:
        logged = mlflow.create_external_model(name="grpo", source_run_id=run.info.run_id)
    version = registry.register(cfg, logged_model_id=logged.model_id, tags={
        registry.TAG_MODEL_URI: str(paths["model"]), registry.TAG_SID_MAP_URI: str(paths["sid_map"]),
        registry.TAG_CODEBOOKS_URI: str(paths["codebooks"]), registry.TAG_METRIC: cfg.metric_name,
        registry.TAG_METRIC_VALUE: "0.25", registry.TAG_RUN_KEY: "local-1"})
    previous = registry.find_previous(cfg)
    assert previous.found and previous.version == version and previous.metric_value == 0.25
    assert previous.model_uri == str(paths["model"]) and previous.run_key == "local-1"
    paths["sid_map"].unlink()
    with pytest.raises(FileNotFoundError, match="no longer exist"):
        registry.find_previous(cfg)
