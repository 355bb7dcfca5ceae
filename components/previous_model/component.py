"""The previous_model step as a kfp component."""

from kfp import dsl
from kfp.dsl import Artifact, Output


def previous_model(config: str, context: str, run_key: str, pipeline_job_id: str, previous: Output[Artifact]):
    """Find the production model in the MLflow registry; write what it was built from."""
    from components.previous_model.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, previous=previous)


def build(image: str):
    return dsl.component(previous_model, base_image=image, install_kfp_package=False)
