"""Validation by what evaluation measures: HR@k / NDCG@k of the trie-constrained decoder on a
seeded sample of the valid split, computed with the model being trained, inside the training
processes; the Trainer keeps the checkpoint with the best value.

Stage side (torch-free): :func:`valid_rows` reads the valid split as (history SIDs, target SID)
in a seeded order, :class:`ValidationSample` carries a sample of it and the catalog to the
engines in their payloads, :func:`validation_summary` reads the curve back from the Trainer's
log history for the stage stats.

Training-process side: :class:`SidValidator` decodes the sample with the live model through the
shared decoder (:class:`components.common.decoding_core.TransformersDecoder`: constrained beam search,
and greedy reasoning first in thinking mode) and returns ``hr_at_<k>``, ``ndcg_at_<k>`` (and the
reasoning's closed rate and length in thinking mode). The engines hook it into the Trainer's own
evaluation, so the value is an ``eval_*`` metric like the loss: ``metric_for_best_model``
(``eval_ndcg_at_10``, greater is better), early stopping, the best-checkpoint bookkeeping of
``load_best_model_at_end`` (kept through checkpoint rotation and resumes), the log history and
MLflow all use it unchanged:

* SFT (:class:`SFTValidationLoop`): the evaluation loop computes the validation loss, then adds
  the ranking metrics to the same record;
* GRPO (:class:`GRPOValidationLoop`): TRL's own evaluation (sampled rollouts on an eval set,
  scored by the rewards) is replaced by the ranking validation, run every
  ``validation.every_steps`` steps through ``eval_strategy="steps"``.

Multi-GPU: every process decodes its share of the rows (row ``i`` on process ``i % world``)
with the full weights, unwrapped from DDP / DeepSpeed by TRL's ``unwrap_model_for_generation``
(which, under ZeRO-3, gathers the partitioned parameters on every process for the duration and
removes DeepSpeed's fetch/release hooks); the per-row counts are then summed over the processes,
so every process gets the same metrics and makes the same early-stopping and best-model decision.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from components.common import artifacts
from components.common.errors import InputError
from components.common.training.settings import ValidationConfig

log = logging.getLogger(__name__)


class ValidationSample(BaseModel):
    """What the validation decodes: valid-split rows and the catalog the SIDs are ranked over."""

    histories: list[list[str]]
    """History SIDs of each row, oldest first."""
    targets: list[str]
    """Target SID of each row."""
    catalog_sids: list[str]
    """Every catalog SID (the trie of the constrained beam search)."""


def valid_rows(uri: str, catalog: artifacts.Catalog, seed: int) -> list[tuple[list[str], str]]:
    """(history SIDs, target SID) of every valid-split row of the samples at ``uri``, in a seeded
    random order: any prefix is a seeded sample, and a shorter one is part of a longer one."""
    rows = []
    for sample in artifacts.read_samples(uri).split("valid"):
        missing = [item for item in [*sample.history, sample.target] if item not in catalog.sid_of]
        if missing:
            raise InputError(f"samples {uri} row {sample.row}: item(s) {missing[:3]} have no SID in the sid_map")
        rows.append(([catalog.sid_of[item] for item in sample.history], catalog.sid_of[sample.target]))
    if not rows:
        raise InputError(f"samples {uri}: no rows in the valid split (needed for validation)")
    random.Random(seed).shuffle(rows)
    return rows


def validation_sample(rows: Sequence[tuple[list[str], str]], catalog: artifacts.Catalog,
                      settings: ValidationConfig) -> ValidationSample:
    """The first ``settings.max_samples`` of ``rows`` (see :func:`valid_rows`) and the catalog."""
    chosen = rows[: settings.max_samples] if settings.max_samples is not None else rows
    return ValidationSample(histories=[list(h) for h, _ in chosen], targets=[t for _, t in chosen],
                            catalog_sids=sorted(catalog.sids))


def validation_summary(log_history: Sequence[Mapping[str, Any]], settings: ValidationConfig,
                       result: Mapping[str, Any], restored_best: bool) -> dict[str, Any]:
    """The validation curve (one entry per evaluation that has the metric) and the step whose
    weights were kept (the best one when ``restored_best``, else the last; 0 when the starting
    model was kept, ``result["kept_start"]``), for the stage stats."""
    key = settings.best_metric_key
    curve = [{"step": int(r["step"]), **{k.removeprefix("eval_"): v for k, v in r.items() if k.startswith("eval_")}}
             for r in log_history if key in r]
    if result.get("kept_start"):
        kept_step = 0
    elif restored_best and result.get("best_global_step"):
        kept_step = result["best_global_step"]
    else:
        kept_step = result.get("global_step")
    kept = next((row for row in curve if row["step"] == kept_step), None)
    name = key.removeprefix("eval_")
    return {"metric": name, "mode": settings.mode if settings.ranks else None,
            "rows": curve[0].get("validation_rows") if curve else None, "curve": curve,
            "best_step": result.get("best_global_step"), "best_value": result.get("best_metric"),
            "kept_step": kept_step, "kept_value": kept[name] if kept is not None else None}


# ----------------------------------------------------------------------------------------------
# Training processes
# ----------------------------------------------------------------------------------------------


class SidValidator:
    """Decodes a :class:`ValidationSample` with a Trainer's live model; :meth:`run` returns the
    metrics (without the ``eval_`` prefix). Every training process must call :meth:`run`."""

    def __init__(self, settings: ValidationConfig, sample: ValidationSample, tokenizer: Any):
        from components.common.decoding_config import DecoderSettings

        if not sample.targets:
            raise ValueError("validation sample: no rows")
        self.settings, self.sample, self.tokenizer = settings, sample, tokenizer
        self.decoder_settings = DecoderSettings(
            engine="transformers", beam_width=settings.beam_width, batch_size=settings.batch_size,
            reasoning_batch_size=settings.reasoning_batch_size, max_reasoning_tokens=settings.max_reasoning_tokens)
        self._decoder = None

    def run(self, trainer: Any) -> dict[str, float]:
        import torch
        from trl.models.utils import unwrap_model_for_generation

        from components.common.decoding_core import TransformersDecoder, decode_mode

        accelerator = trainer.accelerator
        share = range(accelerator.process_index, len(self.sample.targets), accelerator.num_processes)
        histories = [self.sample.histories[i] for i in share]
        targets = [self.sample.targets[i] for i in share]
        started = time.perf_counter()
        was_training = trainer.model.training
        with unwrap_model_for_generation(trainer.model_wrapped, accelerator) as model:
            if self._decoder is None:  # the trie is built once; the module stays the same object
                self._decoder = TransformersDecoder.of_model(model, self.tokenizer, self.sample.catalog_sids,
                                                             self.decoder_settings)
            model.eval()
            try:  # under the training's mixed precision (bf16 autocast with DDP; none on a CPU)
                with trainer.compute_loss_context_manager():
                    decoded = decode_mode(self._decoder, histories, self.settings.mode, " (validation)")
            finally:
                model.train(was_training)
        k = self.settings.k
        counts = [0.0] * 5  # rows, hits, NDCG gains, closed reasonings, reasoning tokens
        for row, target in zip(decoded, targets, strict=True):
            rank = row.sids.index(target) if target in row.sids[:k] else None
            counts[0] += 1
            counts[1] += rank is not None
            counts[2] += 1.0 / math.log2(rank + 2) if rank is not None else 0.0
            counts[3] += bool(row.reasoning_closed)
            counts[4] += row.reasoning_tokens or 0
        total = accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=accelerator.device),
                                   reduction="sum").tolist()
        rows = total[0]
        metrics = {f"hr_at_{k}": total[1] / rows, f"ndcg_at_{k}": total[2] / rows, "validation_rows": rows,
                   "validation_seconds": time.perf_counter() - started}
        if self.settings.mode == "thinking":
            metrics.update(reasoning_closed_rate=total[3] / rows, reasoning_tokens=total[4] / rows)
        log.info("validation at step %d (%s, %d rows): HR@%d %.4f, NDCG@%d %.4f in %.1f s",
                 trainer.state.global_step, self.settings.mode, rows, k, metrics[f"hr_at_{k}"], k,
                 metrics[f"ndcg_at_{k}"], metrics["validation_seconds"])
        return metrics


class SFTValidationLoop:
    """Mixed into SFTTrainer: each evaluation computes the validation loss as usual, then adds the
    ranking metrics of ``sid_validator`` (None: the loss only) to the same record, before the
    Trainer logs it, hands it to the callbacks (early stopping) and compares it with the best."""

    sid_validator: SidValidator | None = None

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        output = super().evaluation_loop(*args, **kwargs)
        if self.sid_validator is not None:
            prefix = kwargs.get("metric_key_prefix", "eval")
            output.metrics.update({f"{prefix}_{k}": v for k, v in self.sid_validator.run(self).items()})
        return output


class GRPOValidationLoop:
    """Mixed into GRPOTrainer: an evaluation is the ranking validation of ``sid_validator`` (not
    TRL's sampled, reward-scored eval rollouts), logged and compared like any evaluation."""

    sid_validator: SidValidator

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"):
        from transformers import Trainer

        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.sid_validator.run(self).items()}
        # Trainer.log, not GRPOTrainer.log: the latter would fold the pending training metrics of
        # steps not logged yet into this record (and drop them from their own).
        Trainer.log(self, metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
