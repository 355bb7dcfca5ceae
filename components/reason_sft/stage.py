"""Stage ``reason_sft`` (RECIPE.md section 4): reasoning activation, SFT of the aligned model on
``render_prompt(reasoning_messages(history))`` -> ``think_block(reasoning) + target SID + end``.

The recipe, top to bottom: pre-flight (hardware, the aligned model is a causal LM that knows every
SID token of the sid_map); the reasoning rows, checked (catalog SIDs, no reasoning naming its
target), split into training and a held-out share (the validation loss); with ``direct_fraction``,
direct-mode examples of a share of the training rows beside them; with a ranking
validation metric, a seeded sample of the valid split (thinking-mode HR/NDCG); the SFT engine
trains from a copy of the aligned model and publishes the model; stats and the MLflow
LoggedModel follow.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common import artifacts, storage
from components.common.config import ConfigError
from components.common.errors import InputError
from components.common.lineage import StageRun
from components.common.stage import StageContext
from components.common.training import backbone, launch, sft
from components.common.training.models import finish_stage
from components.common.training.validation import valid_rows, validation_sample
from components.reason_sft.config import ReasonSFTConfig

NAME = "reason_sft"


def split_rows(rows: list[artifacts.ReasoningRow], eval_fraction: float, max_rows: int | None, seed: int):
    """Seeded (train, held-out) split of the reasoning rows."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(rows))) if eval_fraction > 0 else 0
    if n_eval and len(rows) - n_eval < 1:
        raise InputError(f"reasoning: {len(rows)} row(s) cannot be split into training and evaluation")
    held_out = [rows[i] for i in order[:n_eval]]
    train = [rows[i] for i in order[n_eval:]]
    return (train[:max_rows] if max_rows else train), held_out


def encode_training(tokenizer: Any, rows: list[artifacts.ReasoningRow], cfg: ReasonSFTConfig,
                    seed: int) -> sft.Encoded:
    """Every training row as a reasoning example; with ``cfg.direct_fraction``, also a direct-mode
    example (direct prompt + empty think block -> target SID, as direct decoding prompts it) of
    the same history and target for a seeded share of them, so the direct mode is still trained.
    The direct examples are appended: the trainer shuffles the examples every epoch."""
    out = sft.encode_reasoning(tokenizer, rows, "reasoning", cfg.max_length)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), round(cfg.direct_fraction * len(rows))))
    if chosen:
        direct = [(rows[i].history_sids, rows[i].target_sid) for i in chosen]
        out.extend(sft.encode_direct(tokenizer, direct, cfg.supervise_end_token, cfg.max_length, kind="direct"))
    return out


def run(cfg: ReasonSFTConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    gpus = launch.visible_gpus()
    launch.check_hardware(cfg, NAME, gpus)
    launch.gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                 launch.world_size(cfg, gpus), f"{NAME}.global_batch_size")
    backbone.check_backbone_uri(inputs["sft_model"], "input sft_model")
    catalog = artifacts.read_catalog(inputs["sid_map"])
    artifacts.check_model_vocabulary(inputs["sft_model"], catalog, "input sft_model")
    rows = artifacts.read_reasoning(inputs["reasoning"], catalog)
    train_rows, held_out = split_rows(rows, cfg.eval_fraction, cfg.max_rows, ctx.seed)
    validation = None
    if cfg.validation.ranks:
        if "samples" not in inputs:
            raise ConfigError(f"{NAME}.validation.metric: {cfg.validation.metric!r} decodes the valid split, but "
                              "no samples input was given (--samples)")
        validation = validation_sample(valid_rows(inputs["samples"], catalog, ctx.seed), catalog, cfg.validation)

    def prepare_base(out: Path) -> dict[str, Any]:
        storage.copy(inputs["sft_model"], str(out))
        return {}

    def encode(tokenizer):
        evaluation = sft.encode_reasoning(tokenizer, held_out, "held_out", cfg.max_length) if held_out else None
        return encode_training(tokenizer, train_rows, cfg, ctx.seed), evaluation

    record = artifacts.ModelRecord(sid_space=catalog.sid_space, sid_map_digest=ctx.input_digests["sid_map"], stage=NAME)
    stats = sft.run_sft(stage=NAME, cfg=cfg, ctx=ctx, tracker=tracker, output=outputs["model"],
                        input_digests=ctx.input_digests, prepare_base=prepare_base, encode=encode, record=record,
                        sid_vocab=list(catalog.tokens), gpus=gpus, validation=validation)
    return finish_stage(NAME, cfg, tracker, outputs, stats, ctx.input_digests,
                        model_uri=ctx.uri_of("model", outputs["model"]))
