"""On a GPU: the training stages' GPU-only paths for real (issue 11), on Qwen3-1.7B's
architecture at a small width (``backbone.from_config``, random weights, no download):

* alignment SFT in one process through ``accelerate launch`` with DeepSpeed ZeRO-2, bf16 and
  gradient checkpointing (the single-process rendezvous, fp32 master weights in DeepSpeed's
  optimizer, the stage's GPU record);
* GRPO with vLLM colocated in the training process, two steps per reward mode: ``prefix`` (TRL's
  own vLLM sampling) and ``beam_rank`` (the trie logits processor inside TRL's colocated engine),
  every rollout a catalog SID, the weights synced to vLLM and trained.

The reasoning model GRPO starts from learns a one-token reasoning ("ok") and one target SID in
reasoning SFT, so free sampling writes a catalog SID after ``</think>`` every time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.align_sft import STAGE as ALIGN
from components.common import storage
from components.common.artifacts import model_sid_vocabulary, read_catalog
from components.common.config import parse_section
from components.common.training import backbone
from components.grpo import STAGE as GRPO
from components.reason_sft import STAGE as REASON
from tests.training.conftest import context, weights
from tests.training.synthetic import write_reasoning

pytestmark = pytest.mark.gpu

#: Qwen3-1.7B's architecture (head size 128, GQA, QK-norm, tied embeddings, bf16) at a small width.
QWEN3_SMALL = {"architecture": "qwen3-1.7b", "vocab_size": 400, "hidden_size": 256, "intermediate_size": 768,
               "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "max_positions": 2048}
#: One GPU, DeepSpeed ZeRO-2, bf16 and gradient checkpointing: the paper profiles' launch.
ONE_GPU = {"bf16": True, "gradient_checkpointing": True, "logging_steps": 1,
           "launch": {"strategy": "zero2", "num_processes": 1}}
TARGET = 13  # the one target SID of the GRPO prompts: <a_1><b_2><c_1>


def run_stage(stage, values: dict, tmp: Path, inputs: dict[str, str], tracking: str) -> dict:
    cfg = parse_section(stage.config, {**ONE_GPU, **values}, stage.name)
    outputs = {"model": str(tmp / stage.name / "model"), "stats": str(tmp / stage.name / "stats.json")}
    metadata = stage.execute(cfg, context(tmp, tracking), inputs, outputs)
    return {"outputs": outputs, "metadata": metadata, "stats": storage.read_json(outputs["stats"])}


def test_alignment_trains_in_one_deepspeed_zero2_process(tmp_path, synthetic, tracking_uri):
    run = run_stage(ALIGN, {"backbone": {"from_config": QWEN3_SMALL}, "learning_rate": 1e-3, "warmup_steps": 0,
                            "max_steps": 4, "global_batch_size": 8, "per_device_batch_size": 4, "max_length": 256,
                            "eval_strategy": "steps", "eval_steps": 2, "early_stopping_patience": 2,
                            "checkpoint": {"every_steps": 2}},
                    tmp_path, {k: synthetic[k] for k in ("items", "samples", "sid_map", "corpus")}, tracking_uri)
    stats, gpu = run["stats"], run["metadata"]["stats"]
    assert stats["world_size"] == 1 and stats["global_step"] == 4 and stats["resumed_from_step"] is None
    assert stats["tokens_per_s"] > 0 and all(torch.isfinite(torch.tensor(loss)) for _, loss in stats["eval_losses"])
    assert gpu["gpu_peak_memory_mib"] > gpu["gpu_memory_at_start_mib"] and gpu["nvidia_driver"]
    catalog = read_catalog(synthetic["sid_map"])
    assert model_sid_vocabulary(run["outputs"]["model"]) == set(catalog.tokens)
    assert all(torch.isfinite(tensor.float()).all() for tensor in weights(run["outputs"]["model"]).values())


@pytest.fixture(scope="module")
def reasoning_model(tmp_path_factory, synthetic, tracking_uri) -> dict:
    """A reasoning model of Qwen3's architecture that answers "ok" and SID ``TARGET``, trained
    on this GPU with ZeRO-2 + bf16 from a config-built backbone extended with the SID tokens."""
    tmp = tmp_path_factory.mktemp("gpu-grpo")
    built = backbone.build_from_config(tmp / "built", synthetic["items"], synthetic["corpus"], seed=0, **QWEN3_SMALL)
    backbone.extend_with_sids(built, tmp / "sft_model", read_catalog(synthetic["sid_map"]).tokens, tmp / "cache")
    reasoning = write_reasoning(tmp / "reasoning.parquet", 64, targets=[TARGET])
    run_stage(REASON, {"learning_rate": 3e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_steps": 60,
                       "global_batch_size": 16, "per_device_batch_size": 16, "max_length": 512,
                       "eval_strategy": "no", "early_stopping_patience": None, "checkpoint": {"every_steps": 60}},
              tmp, {"sft_model": str(tmp / "sft_model"), "reasoning": reasoning, "sid_map": synthetic["sid_map"]},
              tracking_uri)
    return {"model": str(tmp / "reason_sft" / "model"), "reasoning": reasoning}


@pytest.mark.parametrize("mode", ["prefix", "beam_rank"])
def test_grpo_with_colocated_vllm_trains_two_steps_on_catalog_sids(mode, tmp_path, reasoning_model, synthetic,
                                                                   tracking_uri):
    run = run_stage(GRPO, {
        "learning_rate": 1e-4, "max_steps": 2, "num_generations": 8, "rollout_batch_size": 16,
        "per_device_batch_size": 8, "beta": 0.001, "checkpoint": {"every_steps": 2},
        "reward": {"mode": mode, "beam_width": 4},
        "rollout": {"engine": "vllm", "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
                    "temperature": 0.3, "max_prompt_length": 512, "max_completion_length": 24}},
        tmp_path, {"reasoning_model": reasoning_model["model"], "reasoning": reasoning_model["reasoning"],
                   "sid_map": synthetic["sid_map"]}, tracking_uri)
    stats = run["stats"]
    assert (stats["rollout_engine"], stats["vllm_mode"], stats["reward_mode"]) == ("vllm", "colocate", mode)
    assert [row["step"] for row in stats["steps"]] == [1, 2]
    for row in stats["steps"]:
        assert row["valid_sid_rate"] == 1.0, row
        assert row["kl"] is not None
    assert stats["tokens_per_s"] > 0 and run["metadata"]["stats"]["gpu_peak_memory_mib"] > 0
    # GRPO moves the weights where a group's rewards differ (beam_rank: one hit among 4 beams);
    # the prefix reward of a model that always answers the target is the same for every rollout
    if any(row["reward_std"] > 0 for row in stats["steps"]):
        before, after = weights(reasoning_model["model"]), weights(run["outputs"]["model"])
        assert any(not torch.equal(before[name].float(), after[name].float()) for name in before)
    else:
        assert mode == "prefix"
