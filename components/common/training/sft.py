"""The SFT engine: supervised fine-tuning with TRL's SFTTrainer, for alignment (Stage 1) and
reasoning activation (Stage 2a).

* Encoding: rows become ``input_ids`` + ``completion_mask``, cut to the last ``max_length`` tokens
  (the recipe's cutoff keeps the end, where the answer is; TRL's own ``keep_end`` truncation is
  deprecated). Chat rows ("response" loss): the chat-templated prompt, then the empty think block
  (``prompts.EMPTY_THINK``, how Qwen3 renders a non-thinking turn) unsupervised, then the bare
  answer supervised; the end-of-turn token is appended, supervised only if asked. Narrative rows
  ("full" loss): the plain text + end token, every token supervised, no chat template. Reasoning
  rows: the reasoning prompt, then ``<think>reasoning</think>`` + target SID + end token, all
  supervised (RECIPE.md section 4). Prompt and completion are tokenized separately and
  concatenated, as at inference, where the prompt is tokenized alone and the model continues it.
* :func:`run_sft` is the stage-side driver (prepare base model and data, train or resume, publish
  the model, stats and MLflow model); :func:`train_sft` is the training-process entry point. With
  ``completion_only_loss=True`` TRL 1.16 builds the labels from the mask during dataset
  preparation (``SFTTrainer._prepare_dataset``: -100 where the mask is 0); the examples are already
  cut to ``max_length``, so TRL's truncation is off. The loss is TRL's (fused LM-head kernel) on
  GPUs and the model's own forward on a CPU, the LM head on the supervised positions only
  (:func:`model_loss`; ``loss_kernel``).
* Validation: each evaluation computes the loss on the eval rows and, with a ranking
  ``validation.metric``, HR/NDCG@k of the constrained decoder on the valid sample
  (:mod:`components.common.training.validation`); the best one is kept.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from components.common import artifacts, prompts
from components.common.artifacts import CorpusRow, ReasoningRow
from components.common.training import launch
from components.common.training.settings import SFTSettings, settings_of
from components.common.training.validation import ValidationSample, validation_summary

log = logging.getLogger(__name__)

ENTRY = "components.common.training.sft:train_sft"


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Tokenized examples for SFTTrainer, plus counts for the stage stats."""

    max_length: int
    """Longer examples keep their last ``max_length`` tokens."""
    input_ids: list[list[int]] = field(default_factory=list)
    completion_mask: list[list[int]] = field(default_factory=list)
    rows: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    supervised_tokens: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)

    def add(self, kind: str, ids: list[int], mask: list[int]) -> None:
        if len(ids) > self.max_length:
            ids, mask = ids[-self.max_length :], mask[-self.max_length :]
            self.truncated[kind] += 1
        self.input_ids.append(ids)
        self.completion_mask.append(mask)
        self.rows[kind] += 1
        self.tokens[kind] += len(ids)
        self.supervised_tokens[kind] += sum(mask)

    def extend(self, other: Encoded) -> None:
        """Append ``other``'s examples (already cut to their own ``max_length``) and counts."""
        self.input_ids.extend(other.input_ids)
        self.completion_mask.extend(other.completion_mask)
        for mine, theirs in ((self.rows, other.rows), (self.tokens, other.tokens),
                             (self.supervised_tokens, other.supervised_tokens), (self.truncated, other.truncated)):
            mine.update(theirs)

    def dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "completion_mask": self.completion_mask})

    def stats(self) -> dict[str, Any]:
        return {"rows": dict(self.rows), "tokens": dict(self.tokens),
                "supervised_tokens": dict(self.supervised_tokens), "truncated": dict(self.truncated),
                "total_rows": sum(self.rows.values()), "total_tokens": sum(self.tokens.values())}


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str,
                             supervise_end: bool) -> tuple[list[int], list[int]]:
    """``prompt`` unsupervised, ``completion`` supervised, then the end token (supervised if asked)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + completion_ids + [tokenizer.eos_token_id]
    mask = [0] * len(prompt_ids) + [1] * len(completion_ids) + [int(supervise_end)]
    return ids, mask


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Plain language modelling: every token of ``text`` + end token supervised."""
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return ids, [1] * len(ids)


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt of a non-thinking answer: chat-templated turns + the empty think block."""
    return prompts.render_prompt(tokenizer, messages) + prompts.EMPTY_THINK


def encode_corpus(tokenizer: Any, rows: Iterable[CorpusRow], supervise_end: bool, max_length: int) -> Encoded:
    out = Encoded(max_length)
    for row in rows:
        if row.loss == "full":
            out.add(row.task, *encode_text(tokenizer, row.text))
        else:
            *context, answer = row.messages
            turns = [{"role": m["role"], "content": m["content"]} for m in context]
            # the answer without leading newlines, as Qwen3's template renders a final assistant turn
            out.add(row.task, *encode_prompt_completion(tokenizer, chat_prompt(tokenizer, turns),
                                                        answer["content"].lstrip("\n"), supervise_end))
    return out


def encode_direct(tokenizer: Any, histories: Iterable[tuple[list[str], str]], supervise_end: bool,
                  max_length: int, kind: str = "valid_sid2sid") -> Encoded:
    """The main recommendation task (SID history -> next SID) as direct-mode decoding prompts it,
    e.g. the valid split."""
    out = Encoded(max_length)
    for history, target in histories:
        prompt = chat_prompt(tokenizer, prompts.direct_messages(history))
        out.add(kind, *encode_prompt_completion(tokenizer, prompt, target, supervise_end))
    return out


def encode_reasoning(tokenizer: Any, rows: Iterable[ReasoningRow], kind: str, max_length: int) -> Encoded:
    """Reasoning activation: the think block, the SID and the end token are all supervised."""
    out = Encoded(max_length)
    for row in rows:
        prompt = prompts.render_prompt(tokenizer, prompts.reasoning_messages(row.history_sids))
        completion = prompts.think_block(row.reasoning) + row.target_sid
        out.add(kind, *encode_prompt_completion(tokenizer, prompt, completion, supervise_end=True))
    return out


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------


class SFTPayload(BaseModel):
    """What the SFT training processes get (:attr:`launch.TrainJob.payload`)."""

    settings: SFTSettings
    base_model: str
    """Local folder of the starting model (SID tokens already added)."""
    train_data: str
    eval_data: str | None = None
    gradient_accumulation_steps: int
    record: artifacts.ModelRecord
    """What the trained model folder records about itself (SID space, sid_map, stage)."""
    sid_vocab: list[str]
    new_token_ids: list[int] = Field(default_factory=list)
    new_token_warmup_steps: int = 0
    validation: ValidationSample | None = None
    """The valid sample the ranking validation decodes (``settings.validation.metric`` ndcg / hr)."""


def run_sft(*, stage: str, cfg: SFTSettings, ctx: Any, tracker: Any, output: str,
            input_digests: Mapping[str, str], prepare_base: Callable[[Path], dict[str, Any]],
            encode: Callable[[Any], tuple[Encoded, Encoded | None]], record: artifacts.ModelRecord,
            sid_vocab: list[str], gpus: int, validation: ValidationSample | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse a finished run of the same job) and publish ``output``.

    ``prepare_base(dir)`` writes the starting model into ``dir`` and returns extra payload fields
    (e.g. ``new_token_ids``); ``encode(tokenizer)`` returns the (train, eval) examples;
    ``validation`` is the valid sample of a ranking validation metric; ``input_digests`` (with the
    config) fingerprint the job. ``ctx`` is the StageContext, ``tracker`` the StageRun. Returns the
    stage stats.
    """
    if cfg.validation.ranks and validation is None:
        raise ValueError(f"{stage}.validation.metric {cfg.validation.metric!r} needs a valid sample to decode")
    world = launch.world_size(cfg, gpus)
    accumulation = launch.gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                                world, f"{stage}.global_batch_size")

    def prepare(work: Path) -> tuple[SFTPayload, dict[str, Any]]:
        from transformers import AutoTokenizer

        base = work / "base"
        extra = prepare_base(base)
        train, evaluation = encode(AutoTokenizer.from_pretrained(base))
        for name, encoded in (("training", train), ("evaluation", evaluation)):
            if encoded is not None and encoded.truncated:
                log.warning("%s: %d of %d %s examples are longer than max_length=%d and lose their start",
                            stage, sum(encoded.truncated.values()), sum(encoded.rows.values()), name, cfg.max_length)
        train.dataset().save_to_disk(str(work / "train"))
        if evaluation is not None:
            evaluation.dataset().save_to_disk(str(work / "eval"))
        payload = SFTPayload(settings=settings_of(cfg, SFTSettings), base_model=str(base),
                             train_data=str(work / "train"),
                             eval_data=str(work / "eval") if evaluation is not None else None,
                             gradient_accumulation_steps=accumulation, record=record, sid_vocab=sid_vocab,
                             validation=validation if cfg.validation.ranks else None, **extra)
        return payload, {"train": train.stats(), "eval": evaluation.stats() if evaluation else None}

    stats, result = launch.run_training(
        stage=stage, cfg=cfg, ctx=ctx, tracker=tracker, output=output, input_digests=input_digests, entry=ENTRY,
        world=world, gpu_ids=list(range(world)) if gpus else [], prepare=prepare)
    stats.update(summarize(result))
    stats["validation"] = validation_summary(result.get("log_history", []), cfg.validation, result,
                                             restored_best=cfg.early_stopping_patience is not None)
    return stats


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """Stage stats from the training result: steps, losses, the best value of the validation
    metric and its step (the kept checkpoint when early stopping), throughput, resume point."""
    history = result.get("log_history", [])
    train_losses = [r["loss"] for r in history if "loss" in r]
    eval_losses = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    runtime = next((r["train_runtime"] for r in reversed(history) if "train_runtime" in r), None)
    tokens = result.get("num_input_tokens_seen") or 0
    return {
        "global_step": result["global_step"],
        "resumed_from_step": result.get("resumed_from_step"),
        "epoch": result.get("epoch"),
        "first_train_loss": train_losses[0] if train_losses else None,
        "last_train_loss": train_losses[-1] if train_losses else None,
        "eval_losses": eval_losses,
        "best_eval_loss": min((loss for _, loss in eval_losses), default=None),
        "best_metric": result.get("best_metric"),
        "best_global_step": result.get("best_global_step"),
        "train_tokens": tokens,
        "train_runtime_s": runtime,
        "train_tokens_per_s": tokens / runtime if runtime and tokens else None,
    }


# ----------------------------------------------------------------------------------------------
# Training process
# ----------------------------------------------------------------------------------------------


def model_loss(trainer: Any, model: Any, inputs: dict[str, Any], return_outputs: bool,
               num_items_in_batch: Any) -> Any:
    """The SFT loss through the model's own forward (``loss_kernel: logits``): cross-entropy of the
    next-token logits summed over the supervised tokens (labels != -100) and divided by their
    count in the optimizer step (``num_items_in_batch``): the loss TRL's SFTTrainer computes, same
    labels, same normalisation, label smoothing included (``label_smoothing``: SFTTrainer then
    scores the full logits with transformers' ``LabelSmoother``, the same value).

    Why on a CPU: SFTTrainer scores the labels with a fused LM-head kernel (per-token
    log-probabilities without materialising the logits, plus entropy and top-1 accuracy for its
    per-step metrics). Without Triton it falls back to torch ops that score every position,
    padding included, over the whole vocabulary in some ten passes forward and back: on
    office-tiny's alignment corpus (4,096-token vocabulary, a 64-wide model) ~90% of the step.

    Here the LM head runs on the supervised positions only: the decoder's hidden states are
    gathered where the shifted labels are supervised, then projected to the vocabulary, one
    matmul, a log-softmax and a gather each way. Prompt and padding positions (half the tokens of
    the alignment corpus: the chat prompts of the SID-history rows are ~110 tokens for a 3-token
    answer) never reach the vocabulary, which in a 64-wide model with a 4,000-token vocabulary is
    most of a step's work. The per-step ``entropy`` / ``mean_token_accuracy`` metrics are not
    computed. A model wrapped for distributed training (DDP, DeepSpeed) must run its own forward
    for the gradient sync, and an evaluation that returns the outputs needs the full logits: both
    take ``transformers.Trainer``'s loss over the full logits, the same value.
    """
    from transformers import Trainer

    unwrapped = trainer.accelerator.unwrap_model(model)
    if return_outputs or unwrapped is not model:
        return Trainer.compute_loss(trainer, model, {**inputs, "use_cache": False}, return_outputs,
                                    num_items_in_batch)
    import torch.nn.functional as F

    labels = inputs["labels"][:, 1:]
    supervised = labels != -100
    hidden = unwrapped.get_decoder()(**{k: v for k, v in inputs.items() if k != "labels"},
                                     use_cache=False).last_hidden_state
    logits = unwrapped.get_output_embeddings()(hidden[:, :-1][supervised]).float()
    loss = F.cross_entropy(logits, labels[supervised], reduction="sum",
                           label_smoothing=trainer.args.label_smoothing_factor)
    return loss / (num_items_in_batch if num_items_in_batch is not None else supervised.sum())


def train_sft(job: launch.TrainJob) -> None:
    """Entry point of each training process: SFTTrainer on the prepared data, then save."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer, EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    from components.common.training.callbacks import NewTokenWarmup, standard_callbacks, train_with_checkpoints
    from components.common.training.engine import (
        load_trained_model,
        resumed_step,
        save_trained_model,
        training_arguments,
        write_result,
    )
    from components.common.training.validation import SFTValidationLoop, SidValidator

    class ValidatingSFTTrainer(SFTValidationLoop, SFTTrainer):
        """SFTTrainer whose evaluations add the ranking validation's metrics, and whose loss on a
        CPU comes from the model's own forward (:func:`model_loss`)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if logits_loss:
                return model_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    payload = SFTPayload.model_validate(job.payload)
    cfg = payload.settings
    logits_loss = cfg.loss_kernel == "logits" or (cfg.loss_kernel == "auto" and job.use_cpu)
    tokenizer = AutoTokenizer.from_pretrained(payload.base_model)
    model = load_trained_model(payload.base_model)  # fp32 master weights; bf16 is the Trainer's mixed precision
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    train = load_from_disk(payload.train_data)
    evaluation = load_from_disk(payload.eval_data) if payload.eval_data else None
    evaluate = evaluation is not None and cfg.eval_strategy != "no"
    schedule = dict(eval_strategy=cfg.eval_strategy if evaluate else "no",
                    save_strategy=cfg.eval_strategy if evaluate else "no")
    if evaluate and cfg.eval_strategy == "steps":
        schedule.update(eval_steps=cfg.eval_steps, save_steps=cfg.eval_steps)
    args = SFTConfig(
        **training_arguments(cfg, job, payload.gradient_accumulation_steps),
        **schedule,
        load_best_model_at_end=evaluate and cfg.early_stopping_patience is not None,
        metric_for_best_model=cfg.validation.best_metric_key, greater_is_better=cfg.validation.ranks,
        label_smoothing_factor=cfg.label_smoothing, completion_only_loss=True, max_length=None,
        packing=False, shuffle_dataset=False,  # the Trainer's seeded sampler shuffles every epoch
        include_num_input_tokens_seen="non_padding",
    )
    callbacks = standard_callbacks(job)
    if evaluate and cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if payload.new_token_warmup_steps:
        callbacks.append(NewTokenWarmup(model, payload.new_token_ids, payload.new_token_warmup_steps))
    with warnings.catch_warnings():
        if logits_loss:  # TRL warns that smoothing costs its fused kernel an extra forward; this loss has neither
            warnings.filterwarnings("ignore", message="`label_smoothing_factor` is deprecated", category=FutureWarning)
        trainer = ValidatingSFTTrainer(model=model, args=args, train_dataset=train,
                                       eval_dataset=evaluation if evaluate else None, processing_class=tokenizer,
                                       callbacks=callbacks)
    if evaluate and cfg.validation.ranks:
        if payload.validation is None:
            raise ValueError(f"validation.metric {cfg.validation.metric!r}: the payload has no validation sample")
        trainer.sid_validator = SidValidator(cfg.validation, payload.validation, tokenizer)
    resumed_from = resumed_step(job)
    train_with_checkpoints(trainer, job)
    save_trained_model(trainer, job, payload.record, payload.sid_vocab)
    write_result(job, trainer, resumed_from)
