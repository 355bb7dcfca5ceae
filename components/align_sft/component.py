"""The align_sft stage as a kfp component (a thin wrapper over ``components.align_sft.stage``)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output


def align_sft(config: str, context: str, run_key: str, pipeline_job_id: str,
              items: Input[Dataset], samples: Input[Dataset], sid_map: Input[Dataset], corpus: Input[Dataset],
              model: Output[Model], stats: Output[Artifact], previous: Optional[Input[Artifact]] = None):
    """Stage 1: SID-language alignment SFT; writes the model folder and stats."""
    from components.align_sft.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, items=items, samples=samples,
                   sid_map=sid_map, corpus=corpus, model=model, stats=stats, previous=previous)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(align_sft, base_image=image, install_kfp_package=False)
