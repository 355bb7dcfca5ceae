"""SID quantization stage: item embeddings -> residual quantizer -> unique, stable Semantic IDs."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.sid_quantize.config import SidQuantizeConfig

STAGE = Stage(
    name="sid_quantize",
    config=SidQuantizeConfig,
    run="components.sid_quantize.stage:run",
    description="Embed item text, quantize it into Semantic IDs (RQ-VAE or RQ-KMeans), make every SID "
                "unique, measure; or extend a previous run's SIDs to a changed catalog (incremental).",
    inputs={
        "items": Input(artifacts.ITEMS, "ingest.items", "the catalog to quantize"),
        "previous": Input(artifacts.PREVIOUS, "previous_model.previous",
                          "scheduled retraining: keep the production run's SIDs",
                          when=lambda cfg: cfg.retrain.enabled and cfg.retrain.incremental_sids),
    },
    outputs={"embeddings": artifacts.EMBEDDINGS, "sid_map": artifacts.SID_MAP, "codebooks": artifacts.CODEBOOKS,
             "stats": artifacts.STATS},
    # The paper's encoder (Qwen3-Embedding-4B) wants a GPU: profiles set gpus and a node selector.
    image="cuda",
    resources=ResourceSpec(cpu_request="4", memory_request="16G"),
)
