"""The ingest stage as a kfp component (a thin wrapper over ``components.ingest.stage``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output


def ingest(config: str, context: str, run_key: str, pipeline_job_id: str,
           items: Output[Dataset], samples: Output[Dataset], stats: Output[Artifact]):
    """Read the raw catalog and interactions; write items, samples and stats."""
    from components.ingest.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, items=items, samples=samples, stats=stats)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(ingest, base_image=image, install_kfp_package=False)
