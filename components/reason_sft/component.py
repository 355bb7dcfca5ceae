"""The reason_sft stage as a kfp component (a thin wrapper over ``components.reason_sft.stage``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output


def reason_sft(config: str, context: str, run_key: str, pipeline_job_id: str,
               sft_model: Input[Model], reasoning: Input[Dataset], sid_map: Input[Dataset],
               model: Output[Model], stats: Output[Artifact]):
    """Stage 2a: reasoning activation from the aligned model; writes the model folder and stats."""
    from components.reason_sft.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, sft_model=sft_model, reasoning=reasoning,
                   sid_map=sid_map, model=model, stats=stats)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(reason_sft, base_image=image, install_kfp_package=False)
