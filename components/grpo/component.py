"""The grpo stage as a kfp component (a thin wrapper over ``components.grpo.stage``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output


def grpo(config: str, context: str, run_key: str, pipeline_job_id: str,
         reasoning_model: Input[Model], reasoning: Input[Dataset], sid_map: Input[Dataset],
         model: Output[Model], stats: Output[Artifact]):
    """Stage 2b: GRPO of the reasoning model; writes the model folder and the per-step stats."""
    from components.grpo.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, reasoning_model=reasoning_model,
                   reasoning=reasoning, sid_map=sid_map, model=model, stats=stats)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(grpo, base_image=image, install_kfp_package=False)
