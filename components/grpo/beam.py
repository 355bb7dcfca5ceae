"""Trie-constrained beam rollouts for GRPO (``reward.mode: beam_rank``): TRL's ``rollout_func``.

A later version of the SIDReasoner code reports RL rollouts as trie-constrained beam search with
an exact-match rank reward beating free sampling with the prefix reward (RECIPE.md section 11).
Here one group of ``num_generations`` completions per prompt is built as:

1. ``R = num_generations / beam_width`` reasonings are sampled from the prompt (the rollout
   temperature / top-p / top-k, as in the free mode), each ending at ``</think>``, at EOS or at
   the reasoning budget (``max_completion_length`` minus the closing, the SID and EOS);
2. each reasoning is brought to the SID position: ``</think>`` (written by the model) + ``\\n\\n``,
   or ``\\n</think>\\n\\n`` after a reasoning the model did not close (cut at the budget or ended
   with EOS; as the evaluation does, and the share is logged as ``rollout/reasoning_closed_rate``);
3. the shared trie-constrained beam search (:mod:`components.common.constrained`) decodes
   ``beam_width`` SIDs conditioned on prompt + reasoning, on the exact token ids sampled;
4. every beam is one completion: reasoning + closing + SID tokens + EOS, ordered by reasoning,
   then rank; ``beam_sid``, ``beam_rank`` and ``reasoning_closed`` go to the reward functions.

Which tokens are trained (TRL's ``env_mask``): the sampled reasoning and the SID tokens the beam
search chose, or the reasoning alone (``train_sid=False``, ``reward.train_sid``). The closing
and the final EOS are written by the rollout, not chosen by the model, so they are masked out
of the loss.

Why ``beam_width`` may be below the group size: the beams of one reasoning share its tokens, so
with a single reasoning per group (``beam_width == num_generations``, the MiniOneRec-style
"beams are the group") the advantages on those tokens sum to zero and only the SID is learned.
With several reasonings per group, a reasoning whose beams rank the target high gets a positive
summed advantage, so the reasoning is trained by the ranking it leads to.

Engines, the rest being the same code: :class:`HfEngine` (the training model: HF ``generate``
for the reasoning, the KV-sharing beam search for the SID) and :class:`VllmEngine` (the vLLM
engine TRL colocates with training, built with the trie logits processor by
:func:`colocated_vllm_with_trie`).

Log-probabilities: none are returned. Beam-selected SID tokens have no sampling probability, so
vLLM's importance-sampling correction (which compares sampling and training log-probs of the
same sampled tokens) does not apply; :func:`components.grpo.train.grpo_arguments` switches it
off in this mode.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.common.constrained import RankedSids, SidTrie, constrained_beam_search_ids, left_pad
from components.common.prompts import THINK_CLOSE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reasoning:
    """One sampled reasoning, ready for the SID beam search."""

    token_ids: list[int]
    """The sampled tokens (EOS removed), ending with ``</think>`` when the model closed the block."""
    closing_ids: list[int]
    """Tokens the rollout adds to reach the SID position (not trained)."""
    closed: bool
    """Whether the model wrote ``</think>`` itself."""


class GroupLayoutError(RuntimeError):
    """The prompts of a rollout call are not whole groups of identical prompts."""


class HfEngine:
    """Reasoning and SID beams on a transformers model (the training model on a CPU or without vLLM)."""

    def __init__(self, model_context: Callable[[], contextlib.AbstractContextManager], generation_config: Any,
                 trie: SidTrie, pad_token_id: int, beam_rows: int, generation_rows: int):
        self.model_context, self.generation_config, self.trie = model_context, generation_config, trie
        self.pad_token_id, self.beam_rows, self.generation_rows = pad_token_id, beam_rows, generation_rows
        self.model: Any = None

    @classmethod
    def for_trainer(cls, trainer: Any, trie: SidTrie) -> HfEngine:
        """The engine on a GRPOTrainer's model: unwrapped (ZeRO-3 parameters gathered, gradient
        checkpointing off) as TRL does for its own generation; beam batches of about
        ``per_device_train_batch_size`` rows, reasoning sampled in ``generate`` calls of at most
        the trainer's ``hf_generation_batch_size`` sequences
        (:class:`components.common.training.hf_generation.BoundedGenerationGRPOTrainer`)."""
        from trl.models.utils import unwrap_model_for_generation

        def context() -> contextlib.AbstractContextManager:
            return unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                               gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                               gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)

        return cls(context, trainer.generation_config, trie, trainer.processing_class.pad_token_id,
                   trainer.args.per_device_train_batch_size, trainer.hf_generation_batch_size)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The model unwrapped, without gradients and in eval mode for one rollout call."""
        with self.model_context() as model, torch.no_grad():
            was_training = model.training
            model.eval()
            self.model = model
            try:
                yield
            finally:
                model.train(was_training)
                self.model = None

    def sample(self, prompt_ids: Sequence[Sequence[int]], n: int, max_tokens: int,
               stop_ids: Sequence[int]) -> list[list[list[int]]]:
        """``n`` sampled continuations of each prompt, each cut after its first stop token; the
        prompts go to ``generate`` in chunks of at most ``generation_rows`` sequences (n per
        prompt; at least one prompt per call), which bounds the KV cache on a GPU."""
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens, config.num_return_sequences, config.eos_token_id = max_tokens, n, list(stop_ids)
        device = next(self.model.parameters()).device
        stops = set(stop_ids)
        per_call = max(1, self.generation_rows // n)
        result = []
        for start in range(0, len(prompt_ids), per_call):
            chunk = prompt_ids[start:start + per_call]
            input_ids, attention = left_pad(chunk, self.pad_token_id)
            width = input_ids.shape[1]
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                      generation_config=config)
            rows = []
            for row in out[:, width:].tolist():  # unfinished rows run to max_tokens; finished ones are padded
                end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
                rows.append(row[:end])
            result += [rows[i * n:(i + 1) * n] for i in range(len(chunk))]
        return result

    def beam(self, prefixes: Sequence[Sequence[int]], width: int) -> list[RankedSids]:
        return constrained_beam_search_ids(self.model, prefixes, self.trie, pad_token_id=self.pad_token_id,
                                           num_beams=width, batch_size=max(1, self.beam_rows // width))


class VllmEngine:
    """Reasoning and SID beams on the vLLM engine TRL colocates with training (GPU image).

    The engine must have been built with the trie logits processor and processed-logit
    log-probabilities (:func:`colocated_vllm_with_trie`); TRL pushes the current weights to it
    before every rollout call.
    """

    def __init__(self, llm: Any, trie: SidTrie, trie_path: str, sampling: dict[str, Any],
                 sampling_params: Callable[..., Any] | None = None):
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params  # noqa: N813 (GPU image only)
        self.llm, self.trie, self.trie_path, self.sampling = llm, trie, trie_path, sampling
        self.sampling_params = sampling_params

    @classmethod
    def for_trainer(cls, trainer: Any, trie: SidTrie, trie_path: str) -> VllmEngine:
        sampling = {"temperature": trainer.temperature, "top_p": trainer.top_p, "top_k": trainer.top_k,
                    "min_p": trainer.min_p or 0.0, "repetition_penalty": trainer.repetition_penalty}
        return cls(trainer.vllm_generation.llm, trie, trie_path, sampling)

    def session(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sample(self, prompt_ids: Sequence[Sequence[int]], n: int, max_tokens: int,
               stop_ids: Sequence[int]) -> list[list[list[int]]]:
        params = self.sampling_params(n=n, max_tokens=max_tokens, stop_token_ids=list(stop_ids), **self.sampling)
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        result = []
        for output in outputs:
            rows = []
            for completion in output.outputs:
                ids = list(completion.token_ids)
                stop = completion.stop_reason
                if isinstance(stop, int) and stop in stop_ids and (not ids or ids[-1] != stop):
                    ids.append(stop)  # a stop token vLLM left out of the output
                rows.append(ids)
            result.append(rows)
        return result

    def beam(self, prefixes: Sequence[Sequence[int]], width: int) -> list[RankedSids]:
        from components.common.constrained_vllm import vllm_constrained_beam_search

        return vllm_constrained_beam_search(self.llm, prefixes, self.trie, self.trie_path, num_beams=width,
                                            sampling_params=self.sampling_params)


@contextlib.contextmanager
def colocated_vllm_with_trie(beam_width: int) -> Iterator[None]:
    """While GRPOTrainer is built, make TRL build its colocated vLLM engine for trie-constrained
    beams: :func:`components.common.constrained_vllm.trie_engine_kwargs` (the processor of the
    pinned model runner, processed-logit log-probabilities, prefix caching, enough returned
    log-probs for ``beam_width`` candidates). TRL 1.16 offers no hook for engine arguments; it
    calls the ``LLM`` name of ``trl.generation.vllm_generation``, which is wrapped for the
    duration."""
    from trl.generation import vllm_generation

    from components.common.constrained_vllm import trie_engine_kwargs

    original = vllm_generation.LLM

    def build(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, **trie_engine_kwargs(beam_width)})

    vllm_generation.LLM = build
    try:
        yield
    finally:
        vllm_generation.LLM = original


class BeamRollout:
    """TRL ``rollout_func``: sampled reasoning, then trie-constrained SID beams (module doc).

    ``rollout(prompts, trainer)`` receives this process's prompts, each repeated
    ``num_generations`` times in a row (TRL's sampler), and returns one completion per entry.
    """

    def __init__(self, tokenizer: Any, catalog_sids: Sequence[str], *, beam_width: int, max_completion_length: int,
                 train_sid: bool = True, use_vllm: bool = False, workdir: str | Path | None = None):
        self.tokenizer = tokenizer
        self.train_sid = train_sid
        self.trie = SidTrie.from_tokenizer(tokenizer, catalog_sids)
        if beam_width > self.trie.num_sequences:
            raise ValueError(f"beam_width {beam_width} is larger than the catalog ({self.trie.num_sequences} SIDs)")
        close = tokenizer(THINK_CLOSE, add_special_tokens=False).input_ids
        if len(close) != 1:
            raise ValueError(f"{THINK_CLOSE} must be one token of the tokenizer (got {close})")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to end a completion with")
        self.close_id, self.eos_id, self.beam_width = close[0], tokenizer.eos_token_id, beam_width
        self.separator_ids = tokenizer("\n\n", add_special_tokens=False).input_ids
        self.closing_ids = tokenizer(f"\n{THINK_CLOSE}\n\n", add_special_tokens=False).input_ids
        self.reasoning_budget = max_completion_length - len(self.closing_ids) - self.trie.depth - 1
        if self.reasoning_budget < 1:
            raise ValueError(f"max_completion_length {max_completion_length} leaves no room for reasoning: the "
                             f"closing ({len(self.closing_ids)} tokens), the SID ({self.trie.depth}) and EOS take "
                             "it all")
        self.use_vllm = use_vllm
        self.trie_path: str | None = None
        if use_vllm:  # the engine's logits processor loads the trie by path
            folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sid-trie-"))
            folder.mkdir(parents=True, exist_ok=True)
            self.trie_path = str(folder / f"grpo_sid_trie-{os.getpid()}.pt")  # one per training process
            self.trie.save(self.trie_path)
        log.info("beam rollouts: %d catalog SIDs, %d beams per reasoning, reasoning budget %d tokens, %s engine, "
                 "trained: %s", self.trie.num_sequences, beam_width, self.reasoning_budget,
                 "vLLM" if use_vllm else "HF", "reasoning and SID" if train_sid else "reasoning alone")

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        group = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        engine = (VllmEngine.for_trainer(trainer, self.trie, self.trie_path) if self.use_vllm
                  else HfEngine.for_trainer(trainer, self.trie))
        return self.rollout(prompts, engine, group, stop_ids=[self.close_id, *trainer.eos_token_ids])

    def close(self, sampled: Sequence[int], eos_ids: Sequence[int]) -> Reasoning:
        """The reasoning of one sampled continuation and what closes it."""
        ids = list(sampled)
        if ids and ids[-1] == self.close_id:
            return Reasoning(ids, list(self.separator_ids), closed=True)
        if ids and ids[-1] in eos_ids:
            ids = ids[:-1]
        return Reasoning(ids, list(self.closing_ids), closed=False)

    def rollout(self, prompts: Sequence[str], engine: Any, group: int,
                stop_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """The group of completions of every prompt (see the module doc for their layout)."""
        stop_ids = list(stop_ids) if stop_ids is not None else [self.close_id, self.eos_id]
        eos_ids = [s for s in stop_ids if s != self.close_id]
        unique = self._unique_prompts(prompts, group)
        per_prompt = group // self.beam_width
        prompt_ids = self.tokenizer(text=unique)["input_ids"]
        with engine.session():
            sampled = engine.sample(prompt_ids, per_prompt, self.reasoning_budget, stop_ids)
            reasonings = [self.close(ids, eos_ids) for rows in sampled for ids in rows]
            owners = [p for p in range(len(unique)) for _ in range(per_prompt)]
            prefixes = [prompt_ids[p] + r.token_ids + r.closing_ids for p, r in zip(owners, reasonings)]
            ranked = engine.beam(prefixes, self.beam_width)
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "env_mask": [], "beam_sid": [],
                                "beam_rank": [], "reasoning_closed": []}
        for p, reasoning, beams in zip(owners, reasonings, ranked, strict=True):
            if len(beams.sids) != self.beam_width:
                raise RuntimeError(f"the beam search returned {len(beams.sids)} SIDs, not {self.beam_width}")
            for rank, (sid, sid_ids) in enumerate(zip(beams.sids, beams.token_ids.tolist())):
                out["prompt_ids"].append(list(prompt_ids[p]))
                out["completion_ids"].append(reasoning.token_ids + reasoning.closing_ids + sid_ids + [self.eos_id])
                out["env_mask"].append([1] * len(reasoning.token_ids) + [0] * len(reasoning.closing_ids)
                                       + [int(self.train_sid)] * len(sid_ids) + [0])
                out["beam_sid"].append(sid)
                out["beam_rank"].append(rank)
                out["reasoning_closed"].append(reasoning.closed)
        return {**out, "logprobs": None}

    @staticmethod
    def _unique_prompts(prompts: Sequence[str], group: int) -> list[str]:
        """The prompt of each group; every group must be ``group`` identical prompts in a row."""
        if len(prompts) % group:
            raise GroupLayoutError(f"{len(prompts)} prompts are not whole groups of {group}: every process must "
                                   "hold whole groups (prompts per step divisible by the training processes)")
        unique = list(prompts[::group])
        for g, prompt in enumerate(unique):
            if any(p != prompt for p in prompts[g * group:(g + 1) * group]):
                raise GroupLayoutError(f"group {g} mixes different prompts: the beam rollout needs each group's "
                                       f"{group} copies of a prompt in a row (TRL's RepeatSampler order)")
        return unique
