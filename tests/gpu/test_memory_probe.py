"""On a GPU: does one training step of Qwen3-1.7B fit the 80 GB GPUs the paper profiles assume,
at each profile's micro-batch, sequence length and gradient checkpointing?

No weights are downloaded: the model is Qwen3-1.7B's architecture from its public config
(tests/fixtures/qwen3_1.7b_config.json), randomly initialised on the GPU. The step is the
training stages' arithmetic in one process: fp32 master weights, bf16 autocast (``bf16: true``),
gradients, one fused AdamW step; that is everything ZeRO-2 would shard over the profile's 4 GPUs
held by one, so the peak is an upper bound of each GPU's share. The loss is each stage's:

* SFT (align_sft, reason_sft): the causal-LM loss on ``micro-batch x max_length`` tokens;
* GRPO: the policy loss on the completion's log-probabilities (TRL's ``logits_to_keep`` and
  ``selective_log_softmax``) of ``max_prompt_length + max_completion_length`` tokens, plus the
  frozen bf16 reference model's forward (``beta > 0``); the colocated vLLM engine keeps its
  ``vllm_gpu_memory_utilization`` share of the GPU, which the budget leaves out.

Measured peaks are printed and attached to the test report (``record_property``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pipeline.config import CONFIG_DIR, load_config

CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3_1.7b_config.json"
GPU_BYTES = 80 * 10**9
"""The profiles' nodes: nvidia-h100-80gb (80 GB, counted in decimal bytes: the lower reading)."""


@dataclass(frozen=True)
class Step:
    stage: str
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    completion_len: int | None = None
    """GRPO: log-probabilities of the last ``completion_len`` tokens only."""
    reference_model: bool = False
    vllm_share: float = 0.0
    """Fraction of the GPU a colocated vLLM engine holds."""


def profile_steps() -> list:
    """Each distinct training step of the ``*-qwen3-1.7b`` profiles, named by the profiles using it."""
    steps: dict[Step, list[str]] = {}
    for path in sorted(CONFIG_DIR.glob("*-qwen3-1.7b.yaml")):
        cfg, name = load_config(str(path))
        for stage_name, stage in (("align_sft", cfg.align_sft), ("reason_sft", cfg.reason_sft)):
            step = Step(stage_name, stage.per_device_batch_size, stage.max_length, stage.gradient_checkpointing)
            steps.setdefault(step, []).append(name)
        grpo, rollout = cfg.grpo, cfg.grpo.rollout
        colocated = rollout.engine == "vllm" and rollout.vllm_mode == "colocate"
        step = Step("grpo", grpo.per_device_batch_size, rollout.max_prompt_length + rollout.max_completion_length,
                    grpo.gradient_checkpointing, rollout.max_completion_length, grpo.beta > 0,
                    rollout.vllm_gpu_memory_utilization if colocated else 0.0)
        steps.setdefault(step, []).append(name)
    return [pytest.param(step, id=f"{step.stage}-b{step.micro_batch}-L{step.seq_len}-{'+'.join(names)}")
            for step, names in steps.items()]


def build(config: dict, dtype: torch.dtype, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=dtype)


def train_step(step: Step, config: dict, device: str) -> tuple[torch.nn.Module, float]:
    """One forward + backward + AdamW step of a model of ``config`` (module doc); returns the
    model and the loss."""
    from trl.trainer.utils import selective_log_softmax

    model = build(config, torch.float32, device)
    model.config.use_cache = False
    if step.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    reference = build(config, torch.bfloat16, device).eval() if step.reference_model else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (step.micro_batch, step.seq_len), device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        if step.completion_len is None:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            completion = ids[:, -step.completion_len:]
            if reference is not None:
                with torch.no_grad():
                    ref_logits = reference(input_ids=ids, logits_to_keep=step.completion_len + 1).logits[:, :-1]
                    ref_logps = selective_log_softmax(ref_logits, completion)
                    del ref_logits
            logits = model(input_ids=ids, logits_to_keep=step.completion_len + 1).logits[:, :-1]
            logps = selective_log_softmax(logits, completion)
            advantages = torch.randn(step.micro_batch, 1, device=device)
            loss = -(torch.exp(logps - logps.detach()) * advantages).mean()
            if reference is not None:
                loss = loss + 0.001 * (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, float(loss.detach())


def train_step_peak(step: Step) -> int:
    """Peak reserved GPU memory of one step of Qwen3-1.7B's shapes (bytes)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, _ = train_step(step, json.loads(CONFIG.read_text()), "cuda")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved()
    del model
    torch.cuda.empty_cache()
    return peak


@pytest.mark.parametrize("step", [Step("sft", 2, 16, True), Step("grpo", 2, 16, True, 6, True, 0.3)],
                         ids=["sft", "grpo"])
def test_the_probed_step_trains(step):
    """The probe's step on a CPU at toy size: a finite loss and moved weights (what the GPU probe
    measures is a real training step)."""
    config = {**json.loads(CONFIG.read_text()), "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "vocab_size": 512}
    torch.manual_seed(0)
    before = build(config, torch.float32, "cpu").state_dict()
    torch.manual_seed(0)
    model, loss = train_step(step, config, "cpu")
    assert torch.isfinite(torch.tensor(loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_probe_covers_every_paper_profile():
    steps = [p.values[0] for p in profile_steps()]
    assert {s.stage for s in steps} == {"align_sft", "reason_sft", "grpo"}
    assert all(p.id.endswith("games-qwen3-1.7b+industrial-qwen3-1.7b+office-qwen3-1.7b") for p in profile_steps())


@pytest.mark.gpu
@pytest.mark.parametrize("step", profile_steps())
def test_a_training_step_fits_the_profiles_gpus(step, record_property):
    peak = train_step_peak(step)
    budget = GPU_BYTES * (1 - step.vllm_share)
    record_property("peak_gb", round(peak / 1e9, 2))
    record_property("budget_gb", round(budget / 1e9, 2))
    print(f"{step}: peak {peak / 1e9:.1f} GB of {budget / 1e9:.1f} GB")
    assert peak <= budget, (f"{step.stage} at micro-batch {step.micro_batch} x {step.seq_len} tokens needs "
                            f"{peak / 1e9:.1f} GB at most per GPU; the profiles leave {budget / 1e9:.1f} GB")
