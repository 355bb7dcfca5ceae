"""GRPO training process: TRL's GRPOTrainer on the reasoning prompts with the configured reward mode.

One optimizer step per generation batch (on-policy): ``steps_per_generation`` equals the
gradient accumulation that makes ``rollout_batch_size`` rollouts, so every rollout is used once,
in the step right after it was generated. A reward mode with its own rollouts (``beam_rank``)
hands TRL a ``rollout_func``; on vLLM its colocated engine is then built with the trie logits
processor.
"""

from __future__ import annotations

import contextlib
import warnings

from components.common import training
from components.common.modeling import THINK_CLOSE, THINK_OPEN
from components.grpo.config import GRPOStageConfig
from components.grpo.rewards import RewardInputs, build_reward_funcs

ENTRY = "components.grpo.train:train_grpo"


def grpo_arguments(cfg: GRPOStageConfig, job: training.TrainJob, accumulation: int, use_vllm: bool,
                   vllm_server_url: str | None, reward_weights: list[float]) -> dict:
    """GRPOConfig keyword arguments for ``cfg`` (everything but the shared Trainer settings)."""
    rollout = cfg.rollout
    return dict(
        **training.training_arguments(cfg, job, accumulation),
        steps_per_generation=accumulation,
        num_generations=cfg.num_generations,
        max_completion_length=rollout.max_completion_length,
        temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
        beta=cfg.beta, loss_type=cfg.loss_type, epsilon=cfg.epsilon, scale_rewards=cfg.scale_rewards,
        num_iterations=1, reward_weights=reward_weights,
        mask_truncated_completions=cfg.mask_truncated_completions,
        use_vllm=use_vllm, vllm_mode=rollout.vllm_mode,
        # beam-selected SID tokens have no sampling log-prob to correct (components/grpo/beam.py)
        vllm_importance_sampling_correction=cfg.reward.mode != "beam_rank",
        vllm_gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=rollout.vllm_tensor_parallel_size,
        vllm_max_model_length=rollout.max_prompt_length + rollout.max_completion_length,
        vllm_server_base_url=vllm_server_url, vllm_server_timeout=rollout.vllm_server_timeout,
        shuffle_dataset=True, log_completions=False, save_strategy="no", eval_strategy="no",
    )


def train_grpo(job: training.TrainJob) -> None:
    """Entry point of each training process."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from components.common.trainer_callbacks import standard_callbacks

    payload = job.payload
    cfg = GRPOStageConfig.model_validate(payload["config"])
    tokenizer = AutoTokenizer.from_pretrained(payload["base_model"])
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(payload["base_model"],
                                                 dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    think_ids = (tokenizer.convert_tokens_to_ids(THINK_OPEN), tokenizer.convert_tokens_to_ids(THINK_CLOSE))
    rewards = build_reward_funcs(cfg.reward, RewardInputs(
        catalog=frozenset(payload["catalog"]), think_ids=think_ids, tokenizer=tokenizer,
        max_completion_length=cfg.rollout.max_completion_length, use_vllm=payload["use_vllm"],
        workdir=job.output_dir))
    args = GRPOConfig(**grpo_arguments(cfg, job, payload["gradient_accumulation_steps"], payload["use_vllm"],
                                       payload.get("vllm_server_url"), rewards.weights))
    engine_setup = contextlib.nullcontext()
    if rewards.rollout_func is not None and payload["use_vllm"]:
        from components.grpo.beam import colocated_vllm_with_trie

        engine_setup = colocated_vllm_with_trie(cfg.reward.beam_width)
    with engine_setup, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")  # known: experimental in TRL 1.16
        trainer = GRPOTrainer(model=model, reward_funcs=rewards.funcs, args=args,
                              train_dataset=load_from_disk(payload["prompts"]), processing_class=tokenizer,
                              callbacks=standard_callbacks(job), rollout_func=rewards.rollout_func)
    resumed_from = training.resumed_step(job)  # read now: the checkpoint may be rotated away while training
    trainer.train(resume_from_checkpoint=job.resume_from)
    training.save_trained_model(trainer, job, payload["sid_vocab"])
    training.write_result(job, trainer, resumed_from)
