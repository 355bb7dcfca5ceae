"""The training sections: the paper-scale profiles' recipe settings, the reward modes, the
``trainer_args`` passthrough to TRL, and impossible values rejected with the key named."""

from __future__ import annotations

import pytest

from components.align_sft.config import AlignSFTConfig, BackboneConfig, ConfigBackboneConfig, TinyBackboneConfig
from components.common.config import ConfigError, ResourceSpec, load_yaml, parse_section
from components.common.training.settings import CheckpointConfig, LaunchConfig, RolloutConfig
from components.grpo.config import GRPOStageConfig, RewardConfig
from components.reason_sft.config import ReasonSFTConfig
from pipeline.config import CONFIG_DIR

PAPER_PROFILES = ["games-qwen3-1.7b", "office-qwen3-1.7b", "industrial-qwen3-1.7b"]
SECTIONS = {"align_sft": AlignSFTConfig, "reason_sft": ReasonSFTConfig, "grpo": GRPOStageConfig}


@pytest.mark.parametrize("profile", PAPER_PROFILES)
def test_paper_profile_is_the_recipe(profile):
    data = load_yaml(CONFIG_DIR / f"{profile}.yaml")
    align = parse_section(AlignSFTConfig, data["align_sft"], "align_sft")
    assert (align.learning_rate, align.warmup_steps, align.global_batch_size, align.num_train_epochs,
            align.early_stopping_patience, align.max_length) == (3e-4, 20, 1024, 10, 3, 1024)
    assert align.backbone.uri.endswith("/Qwen3-1.7B") and not align.supervise_end_token and align.bf16
    reason = parse_section(ReasonSFTConfig, data["reason_sft"], "reason_sft")
    assert (reason.learning_rate, reason.warmup_steps, reason.early_stopping_patience, reason.supervise_end_token) \
        == (1e-5, 10, 5, True)
    grpo = parse_section(GRPOStageConfig, data["grpo"], "grpo")
    assert (grpo.num_generations, grpo.prompts_per_step, grpo.learning_rate, grpo.beta, grpo.loss_type) \
        == (16, 256, 5e-7, 0.001, "grpo")
    assert grpo.reward.level_rewards == [0.25, 0.5, 1.0] and grpo.reward.catalog_bonus == 0.1
    assert (grpo.rollout.engine, grpo.rollout.max_completion_length) == ("vllm", 1024)
    # the defaults are the recipe too: the paper profiles mostly spell them out
    assert GRPOStageConfig().model_dump(exclude={"rollout", "checkpoint"}) == \
        grpo.model_dump(exclude={"rollout", "checkpoint"})
    for name in SECTIONS:  # 4 GPUs per training step
        assert parse_section(ResourceSpec, data["resources"][name], f"resources.{name}").gpus == 4


def test_trainer_args_pass_through_what_the_sections_do_not_name():
    align = parse_section(AlignSFTConfig, {"backbone": {"uri": "/m"}, "trainer_args": {
        "optim": "adamw_torch_fused", "adam_beta2": 0.95, "lr_scheduler_kwargs": {"power": 2.0},
        "dataloader_num_workers": 4}}, "align_sft")
    assert align.trainer_args["adam_beta2"] == 0.95
    grpo = parse_section(GRPOStageConfig, {"trainer_args": {"repetition_penalty": 1.1}}, "grpo")
    assert grpo.trainer_args == {"repetition_penalty": 1.1}  # a GRPOConfig field, not an SFTConfig one


@pytest.mark.parametrize("profile", PAPER_PROFILES)
def test_paper_profiles_validate_as_the_recipe(profile):
    """SFT keeps the checkpoint of the best validation loss (the recipe); GRPO runs the recipe's
    periodic greedy validation every 50 steps, in thinking mode, and keeps the best validated model."""
    data = load_yaml(CONFIG_DIR / f"{profile}.yaml")
    for name in ("align_sft", "reason_sft"):
        validation = parse_section(SECTIONS[name], data[name], name).validation
        assert (validation.metric, validation.best_metric_key, validation.ranks) == ("loss", "eval_loss", False)
    assert parse_section(ReasonSFTConfig, data["reason_sft"], "reason_sft").validation.mode == "thinking"
    grpo = parse_section(GRPOStageConfig, data["grpo"], "grpo").validation
    assert (grpo.every_steps, grpo.mode, grpo.best_metric_key, grpo.max_reasoning_tokens) == \
        (50, "thinking", "eval_ndcg_at_10", 1024)


@pytest.mark.parametrize("profile", ["demo", "office-tiny"])
def test_cpu_profiles_keep_the_checkpoint_of_the_best_valid_ndcg(profile):
    data = load_yaml(CONFIG_DIR / f"{profile}.yaml")
    modes = {"align_sft": "direct", "reason_sft": "thinking", "grpo": "thinking"}
    for name, section in SECTIONS.items():
        validation = parse_section(section, data[name], name).validation
        assert (validation.best_metric_key, validation.mode) == ("eval_ndcg_at_10", modes[name]), name
        if validation.mode == "thinking":  # what evaluation will do with the model: the same reasoning budget
            assert validation.max_reasoning_tokens == data["evaluate"]["max_reasoning_tokens"], name
    assert parse_section(GRPOStageConfig, data["grpo"], "grpo").validation.every_steps is not None


def test_reward_mode_is_selected_by_config():
    assert GRPOStageConfig().reward.mode == "prefix"  # the recipe's released setting
    beam = parse_section(GRPOStageConfig, {"reward": {"mode": "beam_rank", "beam_width": 16, "rank_reward": "top1"}},
                         "grpo")
    assert (beam.reward.mode, beam.reward.beam_width, beam.reward.rank_reward) == ("beam_rank", 16, "top1")
    # the vLLM-server restriction is about the engine: HF rollouts in the training process are fine
    parse_section(GRPOStageConfig, {"reward": {"mode": "beam_rank"},
                                    "rollout": {"engine": "hf", "vllm_mode": "server"}}, "grpo")
    # prefix mode ignores the beam settings (beam_width need not divide the group)
    parse_section(GRPOStageConfig, {"reward": {"beam_width": 6}}, "grpo")


BAD = [
    (GRPOStageConfig, {"rollout_batch_size": 100, "num_generations": 16}, "divisible by the group size"),
    (GRPOStageConfig, {"rollout_batch_size": 64, "num_generations": 16, "per_device_batch_size": 24},
     "multiple of per_device_batch_size"),
    (GRPOStageConfig, {"num_generations": 1}, "greater than or equal to 2"),
    (RewardConfig, {"level_rewards": [0.5, 0.25, 1.0]}, "non-decreasing"),
    (RewardConfig, {"mode": "beam"}, "Input should be 'prefix' or 'beam_rank'"),
    (RewardConfig, {"rank_reward": "mrr"}, "Input should be 'ndcg' or 'top1'"),
    (RewardConfig, {"beam_width": 0}, "greater than or equal to 1"),
    (GRPOStageConfig, {"num_generations": 16, "reward": {"mode": "beam_rank", "beam_width": 6}},
     r"reward.beam_width \(6\) must divide the group size num_generations \(16\)"),
    (GRPOStageConfig, {"reward": {"mode": "beam_rank"}, "rollout": {"vllm_mode": "server"}},
     "does not load; use rollout.vllm_mode 'colocate'"),
    (GRPOStageConfig, {"reward": {"mode": "beam_rank"}, "rollout": {"vllm_tensor_parallel_size": 2}},
     "vllm_tensor_parallel_size must be 1"),
    (GRPOStageConfig, {"reward": {"mode": "beam_rank", "beam_width": 16, "train_sid": False}},
     r"train_sid false with beam_width = num_generations \(16\) leaves nothing to train"),
    (GRPOStageConfig, {"reward": {"train_sid": False}}, "reward.train_sid false needs reward.mode beam_rank"),
    (RolloutConfig, {"server": {"base_url": "http://vllm:8000"}}, "server: only used with vllm_mode 'server'"),
    (RolloutConfig, {"vllm_mode": "server", "server": {"gpu_memory_utilization": 0.99}}, "less than or equal to 0.95"),
    (RolloutConfig, {"hf_generation_batch_size": 0}, "greater than or equal to 1"),
    (BackboneConfig, {}, "exactly one of uri"),
    (BackboneConfig, {"uri": "/m", "tiny": {}}, "exactly one of uri"),
    (BackboneConfig, {"tiny": {}, "from_config": {}}, "exactly one of uri"),
    (ConfigBackboneConfig, {"num_heads": 6, "num_kv_heads": 4}, "divisible by num_kv_heads"),
    (TinyBackboneConfig, {"hidden_size": 66, "num_heads": 4}, "divisible by num_heads"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "eval_strategy": "steps"}, "eval_steps: required"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "eval_strategy": "no"}, "early_stopping_patience: needs"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "global_batch_size": 10, "per_device_batch_size": 4},
     "multiple of per_device_batch_size"),
    (AlignSFTConfig, {"backbone": {"uri": "/m", "new_token_warmup_steps": 5}, "launch": {"strategy": "zero3"}},
     "not supported with launch.strategy zero3"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "learning_rate": 0}, "greater than 0"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "learning_rate": "3e-4"}, "valid number"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "epochs": 3}, "unknown key"),
    (ReasonSFTConfig, {"eval_fraction": 0}, "leaves nothing to evaluate"),
    (LaunchConfig, {"strategy": "fsdp"}, "Input should be 'ddp', 'zero2' or 'zero3'"),
    (CheckpointConfig, {"every_steps": 0}, "greater than or equal to 1"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "trainer_args": {"adam_beta3": 0.9}},
     r"align_sft.trainer_args: 'adam_beta3' is not an argument of trl.SFTConfig \(did you mean 'adam_beta2'\?\)"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "trainer_args": {"learning_rate": 0.1}},
     "'learning_rate' is set by the training library from this section's own fields"),
    (ReasonSFTConfig, {"trainer_args": {"repetition_penalty": 1.1}}, "is not an argument of trl.SFTConfig"),
    (ReasonSFTConfig, {"trainer_args": {"label_smoothing_factor": 0.1}}, "is set by the training library"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "label_smoothing": 1.0}, "less than 1"),
    (GRPOStageConfig, {"trainer_args": {"num_generations_eval": 4}}, "is set by the training library"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "validation": {"k": 20}},
     r"align_sft.validation: k \(20\) must be at most beam_width \(10\)"),
    (AlignSFTConfig, {"backbone": {"uri": "/m"}, "validation": {"metric": "ndcg"}, "eval_strategy": "no",
                      "early_stopping_patience": None}, "validation.metric: 'ndcg' is computed at evaluations"),
    (GRPOStageConfig, {"validation": {"metric": "loss"}}, "Input should be 'ndcg' or 'hr'"),
    (GRPOStageConfig, {"validation": {"every_steps": 0}}, "greater than or equal to 1"),
    (ReasonSFTConfig, {"validation": {"mode": "beam"}}, "Input should be 'direct' or 'thinking'"),
]


@pytest.mark.parametrize(("model", "values", "message"), BAD,
                         ids=[f"{m.__name__}-{i}" for i, (m, _, _) in enumerate(BAD)])
def test_impossible_values_are_rejected(model, values, message):
    prefix = "align_sft" if model is AlignSFTConfig else "section"
    with pytest.raises(ConfigError, match=message):
        parse_section(model, values, prefix)
