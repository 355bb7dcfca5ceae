"""``promote`` against a real ``mlflow server``: the promoted model is the servable pyfunc, logged
into the LoggedModel its training stage created, registered at the alias, and
``sidreasoner serve -m models:/NAME@production`` answers with item ids from the registry alone."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

from components.common import registry, storage
from components.common.artifacts import METRICS_SCHEMA
from components.common.config import parse_section
from components.common.registry import PreviousModel
from components.common.stage import StageContext
from components.promote import STAGE as PROMOTE
from tests.serving.test_server import post, start_server

NAME = "serving-promote-test"


def inputs_for(eval_inputs, root: Path, tracking_uri: str, value: float, previous: PreviousModel) -> dict[str, str]:
    """promote's inputs: the tiny model with an external LoggedModel from a stand-in training run,
    evaluate's metrics scoring it ``value``, and what previous_model found."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(NAME)
    with mlflow.start_run(run_name="grpo") as run:
        model_id = mlflow.create_external_model(name="grpo", source_run_id=run.info.run_id).model_id
    root.mkdir(parents=True, exist_ok=True)
    storage.write_json(root / "stats.json", {"mlflow_model_id": model_id})
    storage.write_parquet(pa.Table.from_pylist([{"model": "sidreasoner", "mode": "thinking", "split": "test", "k": 10,
                                                 "hr": value, "ndcg": value, "valid_rate": 1.0, "n": 8,
                                                 "latency_ms": 1.0}], schema=METRICS_SCHEMA), root / "metrics.parquet")
    storage.write_json(root / "codebooks" / "config.json", {"sid_space": None})
    previous.write(str(root / "previous.json"))
    return {"metrics": str(root / "metrics.parquet"), "model": eval_inputs.model,
            "model_stats": str(root / "stats.json"), "sid_map": eval_inputs.sid_map,
            "codebooks": str(root / "codebooks"), "items": eval_inputs.items,
            "samples": eval_inputs.samples, "previous": str(root / "previous.json")}


def promote(eval_inputs, root: Path, tracking_uri: str, value: float, previous: PreviousModel) -> dict:
    cfg = parse_section(PROMOTE.config, {"registered_model": NAME, "serving": {"device": "cpu",
                                                                              "max_reasoning_tokens": 8}}, "retrain")
    ctx = StageContext(run_key=f"test-{root.name}", pipeline_name="t", profile="t", config_hash="h",
                       tracking_uri=tracking_uri, experiment=NAME, cache_uri=str(root / "cache"), seed=0,
                       final_stage="promote")
    inputs = inputs_for(eval_inputs, root, tracking_uri, value, previous)
    PROMOTE.execute(cfg, ctx, inputs, {"decision": str(root / "decision.json")})
    return {"decision": storage.read_json(root / "decision.json"), "inputs": inputs}


@pytest.fixture(scope="module")
def first(eval_inputs, mlflow_server, tmp_path_factory) -> dict:
    return promote(eval_inputs, tmp_path_factory.mktemp("promote") / "first", mlflow_server, 0.2,
                   PreviousModel(found=False, reason="none yet"))


def test_the_promoted_model_is_the_training_stages_logged_model_holding_the_pyfunc(first, mlflow_server):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    decision = first["decision"]
    assert decision["promoted"] and decision["version"] == "1" and decision["model_uri"] == f"models:/{NAME}/1"
    version = registry.production_version(NAME, "production")
    assert version.source == f"models:/{decision['model_id']}"  # the training stage's LoggedModel ...
    logged = mlflow.get_logged_model(decision["model_id"])
    assert MLFLOW_MODEL_IS_EXTERNAL not in logged.tags  # ... now holding the servable model
    assert decision["served"]["checked"] and decision["served"]["settings"]["max_history"] == 10
    meta = mlflow.models.get_model_info(f"models:/{NAME}@production")
    assert set(meta.flavors) == {"python_function"} and meta.signature.params is not None
    score = {m.key: m for m in logged.metrics}["thinking.test.ndcg_at_10"]
    assert score.value == 0.2 and score.dataset_name == "samples"  # the deciding score, on the run's samples


def test_mlflow_models_serve_answers_from_the_registry(first, mlflow_server, eval_inputs, tmp_path):
    from components.common import artifacts

    history = list(artifacts.read_samples(eval_inputs.samples).split("test")[0].history)
    proc, url = start_server(f"models:/{NAME}@production", tmp_path / "server.log", "--tracking-uri", mlflow_server)
    try:
        status, body = post(url, {"dataframe_records": [{"user_id": "u", "history": history}], "params": {"k": 4}})
        assert status == 200 and len(body["predictions"][0]["item_ids"]) == 4
        items = set(artifacts.read_items(eval_inputs.items).by_id)
        assert set(body["predictions"][0]["item_ids"]) <= items
        status, body = post(url, {"dataframe_records": [{"history": ["nope"]}]})
        assert status == 400 and "history[0]" in body["message"]
    finally:
        from tests.conftest import stop

        stop(proc)


def test_a_refused_model_is_neither_packaged_nor_registered(first, eval_inputs, mlflow_server, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    production = PreviousModel(found=True, reason="v1", registered_model=NAME, version="1",
                               metric="ndcg@10/thinking/test", metric_value=0.2)
    second = promote(eval_inputs, tmp_path / "second", mlflow_server, 0.1, production)
    decision = second["decision"]
    assert not decision["promoted"] and decision["version"] is None and decision["served"] is None
    assert "production kept" in decision["reason"]
    assert str(registry.production_version(NAME, "production").version) == "1"
    model_id = storage.read_json(second["inputs"]["model_stats"])["mlflow_model_id"]
    assert mlflow.get_logged_model(model_id).tags[MLFLOW_MODEL_IS_EXTERNAL] == "true"  # no copy of the weights
    assert json.loads(json.dumps(decision))["model_id"] is None
