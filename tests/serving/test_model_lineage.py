"""Which dataset each metric of a training stage's logged model is linked to in MLflow (what its
UI lists as the model's "Datasets used")."""

from __future__ import annotations

from components.common.training.models import metric_datasets


def test_training_metrics_link_to_the_training_data_and_validation_losses_to_the_validation_data():
    lineage = {"corpus": "sha256:c", "samples": "sha256:s", "sid_map": "sha256:m", "items": "sha256:i",
               "backbone": "sha256:b"}
    assert metric_datasets("align_sft", lineage, {"global_step": 6, "best_eval_loss": 0.5}) == {
        "global_step": ("corpus", "sha256:c"), "best_eval_loss": ("samples", "sha256:s")}
    # reason_sft validates on held-out reasoning rows: its own training data
    lineage = {"sft_model": "sha256:a", "reasoning": "sha256:r", "sid_map": "sha256:m"}
    assert metric_datasets("reason_sft", lineage, {"best_eval_loss": 0.4, "last_train_loss": 0.3}) == {
        "best_eval_loss": ("reasoning", "sha256:r"), "last_train_loss": ("reasoning", "sha256:r")}
    lineage = {"reasoning_model": "sha256:a", "reasoning": "sha256:r", "sid_map": "sha256:m"}
    assert metric_datasets("grpo", lineage, {"reward_last": 0.2}) == {"reward_last": ("reasoning", "sha256:r")}


def test_a_run_of_more_than_ten_stages_keeps_one_parent(tmp_path):
    """The DAG with recommend has 11 stages; every stage run finds the one parent of its run key."""
    import mlflow

    from components.common import lineage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for i in range(12):
        with lineage.stage_run(tracking_uri=uri, experiment="parents", artifact_location=None, run_key="local-x",
                               stage=f"s{i}", parent_tags={}, parent_name="p", close_parent=False):
            pass
    runs = mlflow.MlflowClient(uri).search_runs([lineage.configure(uri, "parents")], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 13
    assert {r.data.tags["mlflow.parentRunId"] for r in runs if r not in parents} == {parents[0].info.run_id}
