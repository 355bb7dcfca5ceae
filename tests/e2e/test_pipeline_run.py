"""The whole DAG through kfp's local runner, once, on a small synthetic catalog: every stage's
artifacts exist, run.json is complete, and MLflow walks from the model back to the catalog."""

from __future__ import annotations

import pandas as pd
import pytest

from components.common import lineage, storage
from pipeline.config import DECLARATIONS

#: The demo's DAG: it registers its model and recommends with it (scheduled retraining, local store).
CORE_STAGES = list(DECLARATIONS)


@pytest.fixture(scope="module")
def run(first_run) -> dict:
    """The session's first demo run (tests/e2e/conftest.py), with nothing registered before it."""
    return first_run


def test_run_record_lists_every_stage_output_with_its_digest(run):
    assert run["status"] == "succeeded"
    assert set(run["stages"]) == set(CORE_STAGES)
    for stage in CORE_STAGES:
        outputs = DECLARATIONS[stage].outputs
        assert set(run["stages"][stage]) == set(outputs)
        for name, artifact in run["stages"][stage].items():
            assert storage.digest(artifact["uri"]) == artifact["metadata"]["digest"], (stage, name)
    assert set(run["stats"]) == set(CORE_STAGES)


def test_final_metrics_compare_the_model_with_baselines_and_its_earlier_stages(run):
    metrics = pd.DataFrame(run["metrics"])
    assert set(zip(metrics["model"], metrics["mode"])) == {
        ("sidreasoner", "thinking"), ("sidreasoner", "direct"), ("reason_sft", "thinking"), ("align_sft", "direct"),
        ("sasrec", "direct"), ("sasrec_ce", "direct"), ("popularity", "direct")}
    assert (metrics["valid_rate"] == 1.0).all()  # trie-constrained: every decoded SID is an item
    assert metrics["hr"].between(0, 1).all() and (metrics["n"] == 8).all()
    # the ablation's models are this run's stage outputs, and every question is answered with an interval
    ablation = run["stats"]["evaluate"]["ablation"]
    assert ablation["align_sft"]["model_uri"] == run["stages"]["align_sft"]["model"]["uri"]
    assert ablation["reason_sft"]["model_uri"] == run["stages"]["reason_sft"]["model"]["uri"]
    comparisons = run["stats"]["evaluate"]["comparisons"]
    assert {c["question"] for c in comparisons} == {
        "vs SASRec", "vs SASRec-CE", "thinking vs direct", "reasoning activation vs alignment",
        "GRPO vs reasoning activation", "GRPO vs alignment (direct)"}
    assert all(c["ci_low"] <= c["ci_high"] and c["n"] == 8 and c["bootstrap_samples"] == 200 for c in comparisons)
    assert run["stats"]["evaluate"]["grpo"]["logged_steps"] >= 1
    assert "grid" in run["stats"]["baselines"]["models"]["sasrec_ce"]


def test_sids_are_unique_and_training_used_them(run):
    sid_map = pd.read_parquet(run["stages"]["sid_quantize"]["sid_map"]["uri"])
    assert sid_map["sid"].is_unique
    items = run["stages"]["ingest"]["items"]["metadata"]["rows"]
    assert len(sid_map) == items == run["stats"]["sid_quantize"]["items"]


def test_lineage_walks_from_the_evaluated_model_back_to_the_catalog(run):
    import mlflow

    mlflow.set_tracking_uri(run["mlflow"]["tracking_uri"])
    client = mlflow.MlflowClient()
    parent = client.get_run(run["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[lineage.TAG_RUN_KEY] == run["run_id"]
    children = client.search_runs([run["mlflow"]["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {c.data.tags[lineage.TAG_STAGE]: c for c in children}
    assert set(by_stage) == set(CORE_STAGES)

    def datasets(stage: str, context: str) -> dict[str, str]:
        return {d.dataset.name: {t.key: t.value for t in d.tags}[lineage.TAG_DIGEST]
                for d in by_stage[stage].inputs.dataset_inputs
                if {t.key: t.value for t in d.tags}["mlflow.data.context"] == context}

    # Each hop: an input's digest is the producing stage's output digest.
    hops = [("evaluate", "model", "grpo", "model"), ("grpo", "reasoning_model", "reason_sft", "model"),
            ("reason_sft", "sft_model", "align_sft", "model"), ("align_sft", "corpus", "teacher_corpus", "corpus"),
            ("align_sft", "sid_map", "sid_quantize", "sid_map"), ("sid_quantize", "items", "ingest", "items")]
    for consumer, input_name, producer, output_name in hops:
        assert datasets(consumer, "input")[input_name] == datasets(producer, "output")[output_name]
    raw = datasets("ingest", "input")
    assert set(raw) == {"raw_reviews", "raw_meta"}  # the catalog snapshot, with digests
    assert by_stage["ingest"].data.tags["sidreasoner.catalog_digest"] == run["stats"]["ingest"]["catalog_digest"]
