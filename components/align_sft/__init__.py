"""Alignment SFT (Stage 1): the backbone extended with the SID tokens, fine-tuned on the
alignment corpus (RECIPE.md section 3)."""

from components.align_sft.config import AlignSFTConfig
from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage

STAGE = Stage(
    name="align_sft",
    config=AlignSFTConfig,
    run="components.align_sft.stage:run",
    description="Stage 1: SID-language alignment SFT of the backbone (+ SID tokens) on the corpus mix, "
                "validated on the valid split.",
    inputs={
        "items": Input(artifacts.ITEMS, "ingest.items", "text of the tiny backbone's tokenizer"),
        "samples": Input(artifacts.SAMPLES, "ingest.samples", "the valid split (validation)"),
        "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "SID tokens and catalog"),
        "corpus": Input(artifacts.CORPUS, "teacher_corpus.corpus", "alignment tasks and narratives"),
        "previous": Input(artifacts.PREVIOUS, "previous_model.previous",
                          "scheduled retraining: start from the production model",
                          when=lambda cfg: cfg.retrain.enabled and cfg.retrain.warm_start),
    },
    outputs={"model": artifacts.MODEL, "stats": artifacts.STATS},
    image="cuda",  # paper scale: 4 GPUs (RECIPE.md section 8)
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
)
