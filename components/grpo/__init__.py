"""GRPO (Stage 2b): outcome-driven RL of the reasoning model with TRL's GRPOTrainer and the recipe's SID reward."""

from components.common import artifacts
from components.common.config import ResourceSpec
from components.common.stage import Input, Stage
from components.grpo.config import GRPOStageConfig

STAGE = Stage(
    name="grpo",
    config=GRPOStageConfig,
    run="components.grpo.stage:run",
    description="Stage 2b: GRPO of the reasoning model with the recipe's SID reward or the exact-match rank "
                "reward over trie-constrained beam rollouts (vLLM rollouts on GPU, HF generate on CPU).",
    inputs={"reasoning_model": Input(artifacts.MODEL, "reason_sft.model", "the reasoning-activated model"),
            "reasoning": Input(artifacts.REASONING, "teacher_corpus.reasoning", "prompts and targets"),
            "sid_map": Input(artifacts.SID_MAP, "sid_quantize.sid_map", "catalog of the validity reward"),
            "samples": Input(artifacts.SAMPLES, "ingest.samples", "the valid split of the periodic validation",
                             when=lambda cfg: cfg.grpo.validation.every_steps is not None)},
    outputs={"model": artifacts.MODEL, "stats": artifacts.STATS},
    image="cuda",
    resources=ResourceSpec(cpu_request="2", memory_request="8G"),
)
