"""Stage ``reason_sft`` (RECIPE.md section 4): reasoning activation, SFT of the aligned model on
``render_prompt(reasoning_messages(history))`` -> ``think_block(reasoning) + target SID + end``.

Inputs: ``sft_model`` (align_sft's model folder), ``reasoning`` (Parquet), ``sid_map``.
Outputs: ``model`` (save_pretrained folder + sid_vocab.json), ``stats`` (JSON).
The training code is alignment's (``components.align_sft.sft``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.align_sft import backbone, data
from components.align_sft.sft import run_sft
from components.common import storage, training
from components.common.lineage import StageRun
from components.common.stage import Stage, StageContext
from components.reason_sft.config import ReasonSFTConfig

NAME = "reason_sft"


def split_rows(rows: list[data.ReasoningRow], eval_fraction: float, max_rows: int | None, seed: int):
    """Seeded (train, held-out) split of the reasoning rows."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(rows))) if eval_fraction > 0 else 0
    if n_eval and len(rows) - n_eval < 1:
        raise data.InputError(f"reasoning: {len(rows)} row(s) cannot be split into training and evaluation")
    held_out = [rows[i] for i in order[:n_eval]]
    train = [rows[i] for i in order[n_eval:]]
    return (train[:max_rows] if max_rows else train), held_out


def run(cfg: ReasonSFTConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    gpus = training.visible_gpus()
    training.check_hardware(cfg, NAME, gpus)
    training.gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                   training.world_size(cfg, gpus), f"{NAME}.global_batch_size")
    backbone.check_backbone_uri(inputs["sft_model"], "input sft_model")
    catalog = data.read_catalog(inputs["sid_map"])
    backbone.check_model_vocabulary(inputs["sft_model"], catalog, "input sft_model")
    rows = data.read_reasoning(inputs["reasoning"], catalog)
    if not rows:
        raise data.InputError(f"reasoning {inputs['reasoning']}: no rows")
    train_rows, held_out = split_rows(rows, cfg.eval_fraction, cfg.max_rows, ctx.seed)
    digests = {name: storage.digest(uri) for name, uri in inputs.items()}

    def prepare_base(out: Path) -> dict[str, Any]:
        storage.copy(inputs["sft_model"], str(out))
        return {}

    def encode(tokenizer):
        evaluation = data.encode_reasoning(tokenizer, held_out, "held_out", cfg.max_length) if held_out else None
        return data.encode_reasoning(tokenizer, train_rows, "reasoning", cfg.max_length), evaluation

    stats = run_sft(stage=NAME, cfg=cfg, ctx=ctx, tracker=tracker, output=outputs["model"], input_digests=digests,
                    prepare_base=prepare_base, encode=encode, sid_vocab=list(catalog.tokens), gpus=gpus)
    return training.finish_stage(NAME, cfg, tracker, outputs, stats, digests)


STAGE = Stage(
    name=NAME,
    config=ReasonSFTConfig,
    run=run,
    description="Stage 2a: reasoning activation, SFT of the aligned model on <think>reasoning</think> + "
                "target SID.",
    inputs={"sft_model": "align_sft model folder", "reasoning": "reasoning Parquet",
            "sid_map": "sid_map Parquet (catalog)"},
    outputs={"model": "model", "stats": "stats.json"},
)
