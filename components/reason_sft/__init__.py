"""Reasoning activation (Stage 2a): SFT from the aligned model on <think>reasoning</think> + target SID."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.reason_sft.config import ReasonSFTConfig

STAGE = Stage(
    name="reason_sft",
    config=ReasonSFTConfig,
    run="components.reason_sft.stage:run",
    description="Stage 2a: reasoning activation, SFT of the aligned model on <think>reasoning</think> + "
                "target SID.",
    inputs={"sft_model": Input(artifacts.MODEL, "align_sft.model", "the aligned model"),
            "reasoning": Input(artifacts.REASONING, "teacher_corpus.reasoning", "reasoning paths"),
            "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "the catalog"),
            "samples": Input(artifacts.SAMPLES, "ingest.samples",
                             "the valid split, for validation.metric ndcg / hr (thinking-mode validation)",
                             when=lambda cfg: cfg.reason_sft.validation.ranks)},
    outputs={"model": artifacts.MODEL, "stats": artifacts.STATS},
    image="cuda",
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
)
