"""Ingest: raw catalog and interactions in, canonical items and samples out."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Stage
from components.ingest.config import IngestConfig

STAGE = Stage(
    name="ingest",
    config=IngestConfig,
    run="components.ingest.stage:run",
    description="Read a catalog (amazon18 | amazon23 | release | parquet) and write items, samples "
                "and stats.",
    outputs={"items": artifacts.ITEMS, "samples": artifacts.SAMPLES, "stats": artifacts.STATS},
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
)
