"""The teacher corpus stage as a kfp component (a thin wrapper over ``components.teacher_corpus.stage``).

With ``teacher.backend: litellm`` the task needs the API key in the environment variable named
by ``teacher.api_key_env``: mount the teacher Secret into this task (``kubernetes.secrets``).
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output


def teacher_corpus(config: str, context: str, run_key: str, pipeline_job_id: str,
                   items: Input[Dataset], samples: Input[Dataset], sid_map: Input[Dataset],
                   corpus: Output[Dataset], reasoning: Output[Dataset], stats: Output[Artifact]):
    """Build the alignment corpus and the reasoning-activation data from items, samples and SIDs."""
    from components.teacher_corpus.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, items=items, samples=samples,
                   sid_map=sid_map, corpus=corpus, reasoning=reasoning, stats=stats)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(teacher_corpus, base_image=image, install_kfp_package=False)
