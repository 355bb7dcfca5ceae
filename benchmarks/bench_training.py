"""Training throughput on the tiny model: tokens/s of SFT steps (vs a bare PyTorch AdamW loop on
the same batches) and of GRPO steps (vs bare HF generate of the same rollouts), the latter in both
reward modes (free sampling + prefix reward; trie-constrained beam rollouts + rank reward, timed
against the free mode's steps); CPU, plus the same on a GPU (bf16) when one is present.

Alignment SFT on the ``office-tiny`` corpus (when ``../shared/data/amazon18-office`` exists): the
profile's ingest, SIDs and offline teacher through the stage CLIs (SIDs by RQ-KMeans over the
cached item embeddings instead of the profile's RQ-VAE: every SID is 3 tokens either way, so the
rows and their lengths are the same), the profile's tiny backbone, tasks, cutoff and batch; the
SFT engine's tokens/s with its CPU loss (``loss_kernel: logits``) and with TRL's fused LM-head
kernel (``fused``, the engine before), each against a bare loop on batches of the same rows."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from components.common import artifacts, prompts, sid
from components.common.config import load_yaml, parse_section
from components.common.modeling import load_causal_lm
from components.common.training import backbone, grpo, launch, sft
from components.common.training.settings import GRPOSettings, SFTSettings
from components.grpo.config import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
OFFICE = ROOT.parent / "shared" / "data" / "amazon18-office"
OFFICE_PROFILE = ROOT / "pipeline" / "configs" / "office-tiny.yaml"
OFFICE_STEPS, OFFICE_ROUNDS = 20, 3
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
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = sft.encode_reasoning(tokenizer, rows, "reasoning", max_length=512)
    encoded.dataset().save_to_disk(str(root / "sft-data"))
    settings = SFTSettings(bf16=gpu, gradient_checkpointing=False, learning_rate=1e-3, warmup_steps=0,
                           max_steps=SFT_STEPS, global_batch_size=SFT_BATCH, per_device_batch_size=SFT_BATCH,
                           eval_strategy="no", early_stopping_patience=None, logging_steps=SFT_STEPS)
    job = _job(root, "sft", sft.ENTRY, sft.SFTPayload(
        settings=settings, base_model=str(base), train_data=str(root / "sft-data"), gradient_accumulation_steps=1,
        record=RECORD, sid_vocab=catalog), gpu)
    sft_tokens_per_s = _sft_tokens_per_s(job)
    dataset = load_from_disk(str(root / "sft-data"))
    batches = [dataset[i : i + SFT_BATCH] for i in range(0, len(dataset) - SFT_BATCH + 1, SFT_BATCH)]
    bare_tokens_per_s = _bare_loop(base, tokenizer.pad_token_id, batches, SFT_STEPS, gpu)
    return {"sft_tokens_per_s": sft_tokens_per_s, "bare_loop_tokens_per_s": bare_tokens_per_s,
            "sft_vs_bare_loop_speed_ratio": sft_tokens_per_s / bare_tokens_per_s}


def _sft_tokens_per_s(job: launch.TrainJob) -> float:
    """Run an SFT job; non-padding tokens per second of its training loop."""
    launch.run_entry(job)
    result = json.loads(job.result_path.read_text())
    runtime = next(r["train_runtime"] for r in reversed(result["log_history"]) if "train_runtime" in r)
    return result["num_input_tokens_seen"] / runtime


def _bare_loop(base: Path, pad_token_id: int, batches: list[dict], steps: int, gpu: bool) -> float:
    """Baseline: ``batches`` through a bare forward/backward/AdamW loop; non-padding tokens/s."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if gpu else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if gpu else torch.float32).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        width = max(map(len, batch["input_ids"]))
        ids = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in batch["input_ids"]], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
        labels = torch.tensor([[t if m else -100 for t, m in zip(x, c)] + [-100] * (width - len(x))
                               for x, c in zip(batch["input_ids"], batch["completion_mask"])], device=device)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - start)


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
                            logging_steps=1, rollout={"engine": "hf", "max_completion_length": GRPO_NEW_TOKENS},
                            validation={"every_steps": None})
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


def _stage_cli(stage: str, out: Path, tracking: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"components.{stage}", "--config", str(OFFICE_PROFILE), "--out",
                           str(out), "--tracking-uri", tracking, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{stage} failed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")


def _office_tiny_corpus(root: Path) -> dict[str, Path]:
    """The office-tiny items, SID map and corpus, built by the stage CLIs (SIDs by RQ-KMeans)."""
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    _stage_cli("ingest", root / "ingest", tracking, "--set", f"ingest.source={OFFICE}")
    items, samples = root / "ingest" / "items.parquet", root / "ingest" / "samples.parquet"
    _stage_cli("sid_quantize", root / "sid", tracking, "--items", str(items), "--set", "sid_quantize.method=rq_kmeans")
    sid_map = root / "sid" / "sid_map.parquet"
    _stage_cli("teacher_corpus", root / "teacher", tracking, "--items", str(items), "--samples", str(samples),
               "--sid-map", str(sid_map))
    return {"items": items, "sid_map": sid_map, "corpus": root / "teacher" / "corpus.parquet"}


def _office_tiny_sft() -> dict:
    """Alignment SFT on the office-tiny corpus: the engine (both loss kernels) vs a bare loop."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from components.align_sft.config import AlignSFTConfig

    cfg = parse_section(AlignSFTConfig, load_yaml(OFFICE_PROFILE)["align_sft"], "align_sft")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        files = _office_tiny_corpus(root)
        catalog = artifacts.read_catalog(str(files["sid_map"]))
        corpus = artifacts.read_corpus(str(files["corpus"]), catalog, cfg.tasks)
        backbone.build_tiny(root / "tiny", str(files["items"]), str(files["corpus"]), seed=42,
                            **cfg.backbone.tiny.model_dump())
        base = root / "base"
        backbone.extend_with_sids(root / "tiny", base, catalog.tokens, root / "download", seed=42)
        tokenizer = AutoTokenizer.from_pretrained(base)
        encoded = sft.encode_corpus(tokenizer, corpus, cfg.supervise_end_token, cfg.max_length)
        encoded.dataset().save_to_disk(str(root / "train"))
        prepared_s = time.perf_counter() - started

        def engine(kernel: str, run: int) -> float:
            settings = SFTSettings.model_validate({
                **cfg.model_dump(include=set(SFTSettings.model_fields)), "max_steps": OFFICE_STEPS,
                "eval_strategy": "no", "eval_steps": None, "early_stopping_patience": None,
                "logging_steps": OFFICE_STEPS, "loss_kernel": kernel, "validation": {"metric": "loss"}})
            return _sft_tokens_per_s(_job(root, f"sft-{kernel}-{run}", sft.ENTRY, sft.SFTPayload(
                settings=settings, base_model=str(base), train_data=str(root / "train"),
                gradient_accumulation_steps=1, record=RECORD, sid_vocab=list(catalog.tokens)), gpu=False))

        # the bare loop's batches: seeded random draws of the same rows, as the Trainer's sampler makes
        dataset = load_from_disk(str(root / "train"))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(42)).tolist()
        size = cfg.per_device_batch_size
        batches = [dataset[order[i * size:(i + 1) * size]] for i in range(OFFICE_STEPS)]
        # interleaved rounds, the best of each: other work on a shared machine only ever slows a
        # run down, and one run more than another
        logits, bare, fused = [], [], engine("fused", 0)
        for run in range(OFFICE_ROUNDS):
            logits.append(engine("logits", run))
            bare.append(_bare_loop(base, tokenizer.pad_token_id, batches, OFFICE_STEPS, gpu=False))
        logits, bare = max(logits), max(bare)
    return {"office_tiny_rows": encoded.stats()["total_rows"],
            "office_tiny_mean_row_tokens": encoded.stats()["total_tokens"] / encoded.stats()["total_rows"],
            "office_tiny_corpus_seconds": prepared_s,
            "office_tiny_sft_tokens_per_s": logits, "office_tiny_sft_fused_kernel_tokens_per_s": fused,
            "office_tiny_bare_loop_tokens_per_s": bare,
            "office_tiny_sft_vs_bare_loop_speed_ratio": logits / bare,
            "office_tiny_sft_fused_kernel_vs_bare_loop_speed_ratio": fused / bare}


def run() -> dict:
    result = {"torch_threads": torch.get_num_threads(), "cpu": _profile(gpu=False)}
    if OFFICE.is_dir():
        result["cpu"].update(_office_tiny_sft())
    else:
        result["office_tiny"] = f"skipped: {OFFICE} not found"
    if torch.cuda.is_available():
        result["gpu"] = {"device": torch.cuda.get_device_name(0), **_profile(gpu=True)}
    summary = {f"cpu_{k}": round(v, 2) for k, v in result["cpu"].items()}
    if "gpu" in result:
        summary.update({f"gpu_{k}": round(v, 2) for k, v in result["gpu"].items() if isinstance(v, float)})
    result["summary"] = summary
    return result
