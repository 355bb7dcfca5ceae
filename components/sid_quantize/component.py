"""The sid_quantize stage as a kfp component (a thin wrapper over ``components.sid_quantize.stage``)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output


def sid_quantize(config: str, context: str, run_key: str, pipeline_job_id: str, items: Input[Dataset],
                 embeddings: Output[Dataset], sid_map: Output[Dataset], codebooks: Output[Model],
                 stats: Output[Artifact], previous: Optional[Input[Artifact]] = None):
    """Embed the catalog, quantize it into unique Semantic IDs, and write embeddings, sid_map,
    codebooks and stats."""
    from components.sid_quantize.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, items=items, embeddings=embeddings,
                   sid_map=sid_map, codebooks=codebooks, stats=stats, previous=previous)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(sid_quantize, base_image=image, install_kfp_package=False)
