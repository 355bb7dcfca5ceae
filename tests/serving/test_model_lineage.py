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
