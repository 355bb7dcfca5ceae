"""Stage ``grpo`` (RECIPE.md section 5): GRPO of the reasoning-activated model on the reasoning
prompts (history SIDs -> target SID), scored by the recipe's SID reward (``reward.mode: prefix``,
free sampling) or by the exact-match rank reward over trie-constrained beam rollouts
(``reward.mode: beam_rank``, RECIPE.md section 11).

Inputs: ``reasoning_model`` (reason_sft's model folder), ``reasoning`` (prompts and targets),
``sid_map`` (catalog of the validity reward), ``samples`` (the valid split of the periodic
validation, ``validation.every_steps``: greedy thinking-mode decoding every N steps, the best
validated model kept). Outputs: ``model`` (save_pretrained folder + sid_vocab.json), ``stats``
(JSON with the per-step table: reward, hit rate, valid-SID rate, reasoning length, KL, and the
validation's HR/NDCG at the steps it ran; the validation curve and the kept step). MLflow also
gets the table as CSV and a chart of reward vs reasoning length per step.
"""

from __future__ import annotations

import csv
import logging
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common import artifacts, prompts, storage
from components.common.config import ConfigError
from components.common.errors import InputError
from components.common.lineage import StageRun
from components.common.stage import StageContext
from components.common.training import backbone, grpo, launch
from components.common.training.models import finish_stage
from components.common.training.settings import GRPOSettings, settings_of
from components.common.training.validation import valid_rows, validation_sample, validation_summary
from components.grpo import report
from components.grpo.config import GRPOStageConfig
from components.grpo.rollout import plan_rollouts, vllm_server

log = logging.getLogger(__name__)

NAME = "grpo"


def prompt_rows(tokenizer: Any, rows: list[artifacts.ReasoningRow], max_prompt_length: int, max_prompts: int | None,
                seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """GRPO prompts (``render_prompt(reasoning_messages(history))``) and targets; prompts longer
    than ``max_prompt_length`` tokens are dropped, as in the recipe."""
    if max_prompts is not None and len(rows) > max_prompts:
        rows = random.Random(seed).sample(rows, max_prompts)
    columns: dict[str, list[str]] = {"prompt": [], "target_sid": []}
    dropped = 0
    for row in rows:
        prompt = prompts.render_prompt(tokenizer, prompts.reasoning_messages(row.history_sids))
        if len(tokenizer(prompt)["input_ids"]) > max_prompt_length:
            dropped += 1
            continue
        columns["prompt"].append(prompt)
        columns["target_sid"].append(row.target_sid)
    return columns, {"prompts": len(columns["prompt"]), "dropped_overlong": dropped}


def run(cfg: GRPOStageConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    gpus = launch.visible_gpus()
    launch.check_hardware(cfg, NAME, gpus)
    plan = plan_rollouts(cfg, gpus, NAME)
    world = 1 if not plan.train_gpus else (cfg.launch.num_processes or len(plan.train_gpus))
    if plan.train_gpus and world > len(plan.train_gpus):
        raise ConfigError(f"{NAME}.launch.num_processes: {world} processes but {len(plan.train_gpus)} GPU(s) "
                          "are left for training")
    accumulation = launch.gradient_accumulation(cfg.rollout_batch_size, cfg.per_device_batch_size, world,
                                                f"{NAME}.rollout_batch_size")
    backbone.check_backbone_uri(inputs["reasoning_model"], "input reasoning_model")
    catalog = artifacts.read_catalog(inputs["sid_map"])
    if len(cfg.reward.level_rewards) != catalog.levels:
        raise ConfigError(f"{NAME}.reward.level_rewards: {len(cfg.reward.level_rewards)} values but the sid_map "
                          f"SIDs have {catalog.levels} levels")
    artifacts.check_model_vocabulary(inputs["reasoning_model"], catalog, "input reasoning_model")
    if cfg.reward.mode == "beam_rank":
        check_beam_layout(cfg, world, len(catalog.sids))
    rows = artifacts.read_reasoning(inputs["reasoning"], catalog)
    validation = None
    if cfg.validation.every_steps is not None:
        if "samples" not in inputs:
            raise ConfigError(f"{NAME}.validation.every_steps: the periodic validation decodes the valid split, but "
                              "no samples input was given (--samples); set it to null to train without validation")
        validation = validation_sample(valid_rows(inputs["samples"], catalog, ctx.seed), catalog, cfg.validation)

    def prepare(work: Path) -> tuple[grpo.GRPOPayload, dict[str, Any]]:
        from datasets import Dataset
        from transformers import AutoTokenizer

        base = work / "base"
        storage.copy(inputs["reasoning_model"], str(base))
        tokenizer = AutoTokenizer.from_pretrained(base)
        if cfg.reward.mode == "beam_rank":
            check_beam_tokens(cfg, tokenizer, catalog.sids)
        columns, data_stats = prompt_rows(tokenizer, rows, cfg.rollout.max_prompt_length, cfg.max_prompts, ctx.seed)
        if len(columns["prompt"]) < cfg.prompts_per_step:  # TRL drops incomplete generation batches
            raise InputError(
                f"reasoning {inputs['reasoning']}: {len(columns['prompt'])} usable prompt(s) "
                f"({data_stats['dropped_overlong']} longer than {NAME}.rollout.max_prompt_length), fewer than the "
                f"{cfg.prompts_per_step} prompts of one step ({NAME}.rollout_batch_size / num_generations)")
        Dataset.from_dict(columns).save_to_disk(str(work / "prompts"))
        payload = grpo.GRPOPayload(
            settings=settings_of(cfg, GRPOSettings), base_model=str(base), prompts=str(work / "prompts"),
            gradient_accumulation_steps=accumulation, use_vllm=plan.engine == "vllm",
            vllm_server_url=plan.server_url, rewards="components.grpo.rewards:for_training",
            reward_args={"reward": cfg.reward.model_dump(mode="json"), "catalog": sorted(catalog.sids)},
            record=artifacts.ModelRecord(sid_space=catalog.sid_space, sid_map_digest=ctx.input_digests["sid_map"],
                                         stage=NAME),
            sid_vocab=list(catalog.tokens), validation=validation)
        return payload, data_stats

    stats, result = launch.run_training(
        stage=NAME, cfg=cfg, ctx=ctx, tracker=tracker, output=outputs["model"], input_digests=ctx.input_digests,
        entry=grpo.ENTRY, world=world, gpu_ids=plan.train_gpus[:world], prepare=prepare,
        around=lambda payload: vllm_server(plan, cfg, payload.base_model))
    history = result.get("log_history", [])
    table = report.step_table(history, cfg.validation)
    validated = cfg.validation.every_steps is not None
    stats.update({"global_step": result["global_step"], "resumed_from_step": result.get("resumed_from_step"),
                  "rollout_engine": plan.engine, "vllm_mode": plan.vllm_mode, "reward_mode": cfg.reward.mode,
                  "train_runtime_s": next((r["train_runtime"] for r in reversed(history) if "train_runtime" in r),
                                          None),
                  "summary": report.summarize(table), "steps": table,
                  "validation": validation_summary(history, cfg.validation, result, restored_best=True)
                  if validated else None})
    log_step_table(tracker, table)
    metrics = {"global_step": stats["global_step"], **stats["summary"]}
    if validated:
        summary = stats["validation"]
        metrics.update(kept_step=summary["kept_step"], kept_valid_value=summary["kept_value"])
        if result.get("kept_start"):
            log.warning("%s: no validation during training scored above the model it started from (%s %.4f at "
                        "step 0, best %.4f at step %s): the stage's model is that reasoning model, unchanged",
                        NAME, summary["metric"], summary["kept_value"], summary["best_value"], summary["best_step"])
    return finish_stage(NAME, cfg, tracker, outputs, stats, ctx.input_digests,
                        model_uri=ctx.uri_of("model", outputs["model"]), metrics=metrics)


def check_beam_layout(cfg: GRPOStageConfig, world: int, catalog_size: int) -> None:
    """beam_rank: every training process must hold whole groups (its prompts' beams are searched
    together), and a reasoning needs beam_width distinct catalog SIDs."""
    per_process = cfg.rollout_batch_size // world
    if per_process % cfg.num_generations:
        raise ConfigError(f"{NAME}.rollout_batch_size: {cfg.rollout_batch_size} rollouts over {world} training "
                          f"processes is {per_process} per process, not whole groups of num_generations "
                          f"({cfg.num_generations}); reward.mode beam_rank needs prompts per step "
                          f"({cfg.prompts_per_step}) divisible by the processes")
    if cfg.reward.beam_width > catalog_size:
        raise ConfigError(f"{NAME}.reward.beam_width: {cfg.reward.beam_width} beams but the sid_map has only "
                          f"{catalog_size} items")


def check_beam_tokens(cfg: GRPOStageConfig, tokenizer: Any, catalog_sids: frozenset[str]) -> None:
    """beam_rank: the rollout can be built on this tokenizer (``</think>`` one token, an EOS, room
    for reasoning within max_completion_length) — by building it."""
    from components.grpo.beam import BeamRollout

    try:
        BeamRollout(tokenizer, sorted(catalog_sids), beam_width=cfg.reward.beam_width,
                    max_completion_length=cfg.rollout.max_completion_length)
    except ValueError as exc:
        raise ConfigError(f"{NAME}.reward.mode beam_rank: {exc}") from None


def log_step_table(tracker: StageRun, table: list[dict[str, Any]]) -> None:
    """The per-step table (CSV) and its chart (PNG) as MLflow artifacts of the stage run."""
    if not table:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grpo_steps.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        tracker.log_artifact(path)
        tracker.log_artifact(report.plot(table, Path(tmp) / "grpo_reward_vs_reasoning.png"))
