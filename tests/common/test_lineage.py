"""MLflow lineage against a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import pytest

from components.common import lineage
from components.common.stage import StageContext


def _ctx(server: str, run_key: str, final: str = "evaluate") -> StageContext:
    return StageContext(run_key=run_key, pipeline_name="p", profile="test", config_hash="abc123",
                        git_commit="deadbeef", images={"ingest": "reg/ingest:t"}, tracking_uri=server,
                        experiment="lineage-test", cache_uri="/tmp/cache", seed=1, final_stage=final)


def _client(server):
    import mlflow

    mlflow.set_tracking_uri(server)
    return mlflow.MlflowClient()


def test_stages_nest_under_one_parent_with_datasets(mlflow_server):
    ctx = _ctx(mlflow_server, "kfp-run-123", final="sid_quantize")
    with ctx.tracked("ingest") as tracker:
        tracker.log_params({"format": "amazon18", "preprocess": {"k_core": 5}})
        tracker.log_dataset("raw_reviews", "gs://bucket/raw/reviews.json.gz", "sha256:" + "a" * 64, "input")
        tracker.log_dataset("items", "/runs/x/items", "sha256:" + "b" * 64, "output", extra={"rows": 10})
        tracker.log_metrics({"items": 10, "samples": {"train": 8}})
    with ctx.tracked("sid_quantize") as tracker:
        tracker.log_dataset("items", "/runs/x/items", "sha256:" + "b" * 64, "input")

    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("lineage-test")
    parent = lineage.find_parent_run(exp.experiment_id, "kfp-run-123")
    assert parent is not None
    assert parent.info.status == "FINISHED"  # closed by the final stage
    assert parent.data.tags["kfp.run_id"] == "kfp-run-123"
    assert parent.data.tags[lineage.TAG_CONFIG_HASH] == "abc123"
    assert parent.data.tags[lineage.TAG_GIT] == "deadbeef"
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags[lineage.TAG_STAGE]: r for r in children}
    assert set(by_stage) == {"ingest", "sid_quantize"}
    ingest = by_stage["ingest"]
    assert ingest.data.params["preprocess.k_core"] == "5"
    assert ingest.data.metrics["samples.train"] == 8
    inputs = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]): d
              for d in ingest.inputs.dataset_inputs}
    raw = inputs[("raw_reviews", "input")]
    assert raw.dataset.source_type == "gs"
    assert {t.key: t.value for t in raw.tags}[lineage.TAG_DIGEST] == "sha256:" + "a" * 64
    # the output digest of ingest is the input digest of the next stage: the lineage walk
    out_items = inputs[("items", "output")].dataset.digest
    next_in = [d for d in by_stage["sid_quantize"].inputs.dataset_inputs if d.dataset.name == "items"][0]
    assert next_in.dataset.digest == out_items


def test_failing_stage_marks_parent_failed(mlflow_server):
    ctx = _ctx(mlflow_server, "kfp-run-fail")
    with pytest.raises(ValueError):
        with ctx.tracked("ingest"):
            raise ValueError("bad input")
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("lineage-test")
    parent = lineage.find_parent_run(exp.experiment_id, "kfp-run-fail")
    assert parent.info.status == "FAILED"
    child = client.search_runs([exp.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")[0]
    assert child.info.status == "FAILED"


def test_secrets_never_reach_params(mlflow_server, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-very-secret-value-123")
    ctx = _ctx(mlflow_server, "kfp-run-secret")
    with ctx.tracked("teacher_corpus") as tracker:
        tracker.log_params({"api_key_env": "TEACHER_API_KEY",
                            "oops": "token sk-very-secret-value-123 leaked"})
        tracker.log_dict({"note": "sk-very-secret-value-123"}, "sample.json")
        run_id = tracker.run_id
    client = _client(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["api_key_env"] == "TEACHER_API_KEY"
    assert "sk-very-secret" not in run.data.params["oops"]
    path = client.download_artifacts(run_id, "sample.json")
    assert "sk-very-secret" not in open(path).read()


def test_stages_starting_together_converge_on_one_parent(mlflow_server, monkeypatch):
    """Two root tasks of one run (previous_model and ingest) start at once: both find no parent
    and both create one. They end under one parent, and the other is deleted."""
    import threading

    barrier = threading.Barrier(2)
    find = lineage.find_parent_run
    first_lookup = threading.local()

    def racing_find(experiment_id, run_key):
        if not getattr(first_lookup, "done", False):  # each thread's first lookup: both see none
            first_lookup.done = True
            barrier.wait(timeout=30)
            return None
        return find(experiment_id, run_key)

    monkeypatch.setattr(lineage, "find_parent_run", racing_find)
    errors = []

    def stage(name: str) -> None:
        try:
            with _ctx(mlflow_server, "kfp-run-race", final="promote").tracked(name) as tracker:
                tracker.log_metrics({"done": 1})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=stage, args=(name,)) for name in ("previous_model", "ingest")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("lineage-test")
    parents = lineage.parent_runs(exp.experiment_id, "kfp-run-race")
    assert len(parents) == 1  # the other parent was deleted
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert {r.data.tags[lineage.TAG_STAGE] for r in children} == {"previous_model", "ingest"}
    assert parents[0].info.status == "RUNNING"  # neither is the final stage


def test_a_killed_attempt_left_running_is_closed_by_the_next(mlflow_server):
    ctx = _ctx(mlflow_server, "kfp-run-killed", final="evaluate")
    client = _client(mlflow_server)
    experiment_id = lineage.configure(mlflow_server, "lineage-test")
    parent = lineage.ensure_parent_run(experiment_id, "kfp-run-killed", {}, "p-killed")
    killed = client.create_run(experiment_id, run_name="ingest", tags={
        "mlflow.parentRunId": parent, lineage.TAG_STAGE: "ingest", lineage.TAG_RUN_KEY: "kfp-run-killed"})
    other_stage = client.create_run(experiment_id, run_name="sid_quantize", tags={
        "mlflow.parentRunId": parent, lineage.TAG_STAGE: "sid_quantize", lineage.TAG_RUN_KEY: "kfp-run-killed"})
    with ctx.tracked("ingest") as tracker:
        assert client.get_run(killed.info.run_id).info.status == "FAILED"  # closed when the retry starts
        retry = tracker.run_id
    assert client.get_run(retry).info.status == "FINISHED"
    assert client.get_run(other_stage.info.run_id).info.status == "RUNNING"  # another stage's run is left alone
    assert client.get_run(killed.info.run_id).data.tags["sidreasoner.closed_by"].startswith("a later attempt")
