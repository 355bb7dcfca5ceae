"""Training throughput on the tiny model: tokens/s of SFT steps (vs a bare PyTorch AdamW loop on
the same batches) and of GRPO steps (vs bare HF generate of the same rollouts), the latter in both
reward modes (free sampling + prefix reward; trie-constrained beam rollouts + rank reward, timed
against the free mode's steps); CPU, plus the same on a GPU (bf16) when one is present."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch

from components.common import artifacts, prompts, sid
from components.common.modeling import load_causal_lm
from components.common.training import backbone, grpo, launch, sft
from components.common.training.settings import GRPOSettings, SFTSettings
from components.grpo.config import RewardConfig

SFT_STEPS, SFT_BATCH = 20, 16
GRPO_STEPS, GRPO_PROMPTS, GRPO_GROUP, GRPO_NEW_TOKENS = 3, 8, 4, 32
GRPO_BEAM_WIDTH = 2  # beam mode: 2 reasonings x 2 SID beams per group of 4
RECORD = artifacts.ModelRecord(sid_space=None, sid_map_digest=None, stage="bench")


def _backbone(root: Path, catalog: list[str]) -> Path:
    texts = [prompts.REASONING_SYSTEM, prompts.REASONING_USER, prompts.DIRECT_SYSTEM, prompts.DIRECT_USER,
             "The user keeps buying pens, paper and staplers for the office."] * 20
    tiny = backbone.build_tiny_backbone(root / "tiny", texts, vocab_size=2000, seed=0)
    model, tokenizer = load_causal_lm(tiny)
    torch.manual_seed(0)
    backbone.add_sid_tokens(model, tokenizer, catalog)
    backbone.save_backbone(model, tokenizer, root / "base", catalog)
    return root / "base"


def _rows(catalog_sids: list[str], n: int) -> list[artifacts.ReasoningRow]:
    rng = random.Random(0)
    return [artifacts.ReasoningRow([rng.choice(catalog_sids) for _ in range(5)],
                              "The user keeps buying office supplies, so more of them come next.",
                              rng.choice(catalog_sids)) for _ in range(n)]


def _job(root: Path, name: str, entry: str, payload, gpu: bool) -> launch.TrainJob:
    return launch.TrainJob(entry=entry, stage=name, payload=payload.model_dump(mode="json"), output_dir=str(root / name / "ckpt"),
                           final_dir=str(root / name / "final"), checkpoint_uri=str(root / name / "remote"),
                           checkpoint_every=10_000, keep_checkpoints=1, use_cpu=not gpu)


def _sft(root: Path, base: Path, rows: list[artifacts.ReasoningRow], catalog: list[str], gpu: bool) -> dict:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = sft.encode_reasoning(tokenizer, rows, "reasoning", max_length=512)
    encoded.dataset().save_to_disk(str(root / "sft-data"))
    settings = SFTSettings(bf16=gpu, gradient_checkpointing=False, learning_rate=1e-3, warmup_steps=0,
                           max_steps=SFT_STEPS, global_batch_size=SFT_BATCH, per_device_batch_size=SFT_BATCH,
                           eval_strategy="no", early_stopping_patience=None, logging_steps=SFT_STEPS)
    job = _job(root, "sft", sft.ENTRY, sft.SFTPayload(
        settings=settings, base_model=str(base), train_data=str(root / "sft-data"), gradient_accumulation_steps=1,
        record=RECORD, sid_vocab=catalog), gpu)
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    runtime = next(r["train_runtime"] for r in reversed(result["log_history"]) if "train_runtime" in r)
    sft_tokens_per_s = result["num_input_tokens_seen"] / runtime

    # baseline: the same batches through a bare forward/backward/AdamW loop
    device = "cuda" if gpu else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if gpu else torch.float32).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dataset = load_from_disk(str(root / "sft-data"))
    batches = [dataset[i : i + SFT_BATCH] for i in range(0, len(dataset) - SFT_BATCH + 1, SFT_BATCH)]
    tokens, start = 0, time.perf_counter()
    for step in range(SFT_STEPS):
        batch = batches[step % len(batches)]
        width = max(map(len, batch["input_ids"]))
        ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in batch["input_ids"]], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
        labels = torch.tensor([[t if m else -100 for t, m in zip(x, c)] + [-100] * (width - len(x))
                               for x, c in zip(batch["input_ids"], batch["completion_mask"])], device=device)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    bare_tokens_per_s = tokens / (time.perf_counter() - start)
    return {"sft_tokens_per_s": sft_tokens_per_s, "bare_loop_tokens_per_s": bare_tokens_per_s,
            "sft_vs_bare_loop_speed_ratio": sft_tokens_per_s / bare_tokens_per_s}


def _grpo(root: Path, base: Path, rows: list[artifacts.ReasoningRow], catalog: list[str], catalog_sids: list[str],
          gpu: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = [prompts.render_prompt(tokenizer, prompts.reasoning_messages(r.history_sids)) for r in rows]
    Dataset.from_dict({"prompt": texts, "target_sid": [r.target_sid for r in rows]}).save_to_disk(str(root / "prompts"))
    rollouts = GRPO_PROMPTS * GRPO_GROUP
    step_seconds, completion_tokens = _grpo_steps(root, "grpo", base, catalog, catalog_sids, gpu, {})
    beam_seconds, beam_tokens = _grpo_steps(root, "grpo-beam", base, catalog, catalog_sids, gpu,
                                            {"mode": "beam_rank", "beam_width": GRPO_BEAM_WIDTH})

    # baseline: bare sampling of the same number of rollouts, no training
    device = "cuda" if gpu else "cpu"
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if gpu else torch.float32).to(device)
    batch = tokenizer([t for t in texts[:GRPO_PROMPTS] for _ in range(GRPO_GROUP)], return_tensors="pt",
                      padding=True).to(device)
    start = time.perf_counter()
    out = model.generate(**batch, max_new_tokens=GRPO_NEW_TOKENS, min_new_tokens=GRPO_NEW_TOKENS, do_sample=True)
    generate_seconds = time.perf_counter() - start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * rollouts
    grpo_tokens_per_s, bare_tokens_per_s = completion_tokens / step_seconds, generated / generate_seconds
    return {"grpo_step_seconds": step_seconds, "grpo_completion_tokens_per_s": grpo_tokens_per_s,
            "bare_generate_tokens_per_s": bare_tokens_per_s,
            "grpo_vs_bare_generate_speed_ratio": grpo_tokens_per_s / bare_tokens_per_s,
            "grpo_beam_step_seconds": beam_seconds, "grpo_beam_completion_tokens_per_s": beam_tokens / beam_seconds,
            "grpo_beam_vs_free_step_time_ratio": beam_seconds / step_seconds}


def _grpo_steps(root: Path, name: str, base: Path, catalog: list[str], catalog_sids: list[str], gpu: bool,
                reward: dict) -> tuple[float, float]:
    """(mean seconds per GRPO step, trained completion tokens per step) of ``GRPO_STEPS`` steps."""
    rollouts = GRPO_PROMPTS * GRPO_GROUP
    settings = GRPOSettings(bf16=gpu, gradient_checkpointing=False, learning_rate=1e-5, max_steps=GRPO_STEPS,
                            num_generations=GRPO_GROUP, rollout_batch_size=rollouts, per_device_batch_size=rollouts,
                            logging_steps=1, rollout={"engine": "hf", "max_completion_length": GRPO_NEW_TOKENS})
    job = _job(root, name, grpo.ENTRY, grpo.GRPOPayload(
        settings=settings, base_model=str(base), prompts=str(root / "prompts"), gradient_accumulation_steps=1,
        use_vllm=False, rewards="components.grpo.rewards:for_training",
        reward_args={"reward": RewardConfig.model_validate(reward).model_dump(mode="json"), "catalog": catalog_sids},
        record=RECORD, sid_vocab=catalog), gpu)
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    steps = [r for r in result["log_history"] if "reward" in r]
    step_seconds = sum(r["step_time"] for r in steps) / len(steps)
    return step_seconds, sum(r["completions/mean_length"] for r in steps) / len(steps) * rollouts


def _profile(gpu: bool) -> dict:
    catalog = sid.vocabulary([8, 8, 8])
    rng = random.Random(1)
    catalog_sids = sorted({sid.format_sid([rng.randrange(8) for _ in range(3)]) for _ in range(200)})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        launch.quiet_progress_bars()
        base = _backbone(root, catalog)
        rows = _rows(catalog_sids, 128)
        return {**_sft(root, base, rows, catalog, gpu),
                **_grpo(root, base, rows[:GRPO_PROMPTS * 2], catalog, catalog_sids, gpu)}


def run() -> dict:
    result = {"torch_threads": torch.get_num_threads(), "cpu": _profile(gpu=False)}
    if torch.cuda.is_available():
        result["gpu"] = {"device": torch.cuda.get_device_name(0), **_profile(gpu=True)}
    summary = {f"cpu_{k}": round(v, 2) for k, v in result["cpu"].items()}
    if "gpu" in result:
        summary.update({f"gpu_{k}": round(v, 2) for k, v in result["gpu"].items() if isinstance(v, float)})
    result["summary"] = summary
    return result
