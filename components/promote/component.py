"""The promote step as a kfp component."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output


def promote(config: str, context: str, run_key: str, pipeline_job_id: str,
            metrics: Input[Dataset], model: Input[Model], model_stats: Input[Artifact], sid_map: Input[Dataset],
            codebooks: Input[Model], previous: Input[Artifact], decision: Output[Artifact]):
    """Register the model and move the production alias if it beats production."""
    from components.promote.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, metrics=metrics, model=model,
                   model_stats=model_stats, sid_map=sid_map, codebooks=codebooks, previous=previous,
                   decision=decision)


def build(image: str):
    return dsl.component(promote, base_image=image, install_kfp_package=False)
