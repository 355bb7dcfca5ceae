"""Teacher corpus: the SID-language alignment corpus (deterministic tasks + teacher enrichment).

With ``teacher.backend: litellm`` the task needs the API key in the environment variable named by
``teacher.api_key_env``: a profile mounts the teacher Secret into this stage only
(``kubernetes.secrets``).
"""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.teacher_corpus.config import TeacherCorpusConfig

STAGE = Stage(
    name="teacher_corpus",
    config=TeacherCorpusConfig,
    run="components.teacher_corpus.stage:run",
    description="Build the SID-language alignment corpus: deterministic tasks from the train split, and "
                "teacher-written (litellm, cached, validated) or offline item/user narratives and "
                "reasoning paths.",
    inputs={"items": Input(artifacts.ITEMS, "ingest.items", "the catalog's text"),
            "samples": Input(artifacts.SAMPLES, "ingest.samples", "the train split's histories"),
            "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "every item's SID")},
    outputs={"corpus": artifacts.CORPUS, "reasoning": artifacts.REASONING, "stats": artifacts.STATS},
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),  # network-bound teacher calls
)
