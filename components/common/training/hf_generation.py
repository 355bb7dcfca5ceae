"""GRPO rollouts from HF ``generate`` in bounded chunks (``rollout.engine: hf``; imported only by
the training processes).

TRL 1.16's GRPOTrainer generates a process's whole generation batch in one ``generate`` call
(``GRPOTrainer._generate_single_turn``, its "regular generation path"): rollout_batch_size /
processes sequences, 1,024 in the paper profiles on 4 GPUs. The KV cache grows with that batch
(Qwen3-1.7B in bf16: ~0.11 MB per token and sequence, so 1,024 x 2,048 tokens is ~235 GB), so a
GPU runs out of memory. :class:`BoundedGenerationGRPOTrainer` hands that path at most
``hf_generation_batch_size`` sequences at a time. The prompts are already TRL's repeated groups
and every chunk is left-padded on its own, so each sequence is generated as in one call; only
the random stream of sampling is consumed in another order.
"""

from __future__ import annotations

from typing import Any

from trl import GRPOTrainer


class BoundedGenerationGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose HF generation runs over at most ``hf_generation_batch_size`` sequences
    per ``generate`` call (vLLM and TRL's continuous batching manage their own batches)."""

    def __init__(self, *args: Any, hf_generation_batch_size: int, **kwargs: Any):
        if hf_generation_batch_size < 1:
            raise ValueError(f"hf_generation_batch_size must be >= 1 (got {hf_generation_batch_size})")
        self.hf_generation_batch_size = hf_generation_batch_size
        super().__init__(*args, **kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        size = self.hf_generation_batch_size
        if self.use_vllm or self.use_transformers_continuous_batching or len(prompt_ids) <= size:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        if (images is not None and any(image is not None for image in images)) or multimodal_fields:
            raise ValueError("bounded HF generation handles text prompts only (the GRPO prompts are text)")
        completion_ids: list[list[int]] = []
        for start in range(0, len(prompt_ids), size):
            chunk, _ = super()._generate_single_turn(prompt_ids[start:start + size], None, {}, num_generations,
                                                     has_tool_images)
            completion_ids.extend(chunk)
        return completion_ids, None  # the HF path computes no sampling log-probabilities
