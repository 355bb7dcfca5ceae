"""Stand-ins for ``vllm.LLM`` on each of vLLM 0.31's GPU model runners, running a small HF model and
calling a logits processor exactly as that runner does (vLLM is CUDA-only; this is how the trie
processors are exercised on a CPU).

Both engines schedule like vLLM: at most ``max_num_seqs`` requests run at once, finished requests
leave and waiting ones enter mid-flight, and the batch order changes between steps; each step runs
the model on every running request (no KV cache: the whole sequence each time), applies the
processor to the batch logits, picks tokens (greedy at temperature 0, else seeded sampling) and
returns ``processed_logits`` log-probabilities (the processed values of the sampled token and the
top ``logprobs`` tokens, ``vllm/v1/worker/gpu/sample/logprob.py: compute_topk_scores``).

Where the runners differ (paths in the vllm 0.31.0 wheel):

* :class:`FakeV1Engine` keeps a persistent batch as ``vllm/v1/worker/gpu_input_batch.py`` does: an
  added request takes the lowest freed index or goes last (``_register_add_request``, l.322-345),
  ``condense`` moves the last rows down into holes (UNIDIRECTIONAL moves, l.700-795), reordering
  swaps rows (``swap_states``, SWAP moves, l.582-662), and the processor gets one
  ``BatchUpdate(batch_size, removed, added, moved)`` per step before ``apply(logits)``
  (``refresh_metadata``, l.834-850); ``added`` carries the prompt and the *live* output list
  (``vllm/v1/sample/logits_processor/interface.py``, l.37-58).
* :class:`FakeV2Engine` keeps request slots as ``vllm/v1/worker/gpu/states.py: RequestState``
  (free slots popped from the end of a free list, l.88-133; ``all_token_ids`` holds prompt +
  committed output, ``total_len`` its length), calls ``add_request(slot, params)`` when a request
  enters (``vllm/v1/worker/gpu/sample/sampler.py``, l.96-107) and nothing when it leaves
  (``model_runner.py: _remove_request``, l.1094-1110), skips the processors when no running
  request needs them, else calls ``apply(logits, ctx)`` on a float32 copy with the step's
  ``LogitsContext`` (``sampler.py: apply_sampling_params``, l.223-256), then appends the sampled
  token at ``total_len`` (``input_batch.py: _post_update_kernel``, l.556-596). A long prompt is
  prefilled in two chunks: the first chunk's sample is discarded, as vLLM does.

``trace`` records, for every processed row of a request, the tokens visible to the sampled one, the
raw and the processed logits, so tests can compare each mask with the HF trie processor's.
"""

from __future__ import annotations

import random
from collections import namedtuple
from dataclasses import dataclass, field
from enum import Enum, auto
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

BatchUpdate = namedtuple("BatchUpdate", "batch_size removed added moved")  # interface.py l.37-58


class MoveDirectionality(Enum):  # interface.py l.17-21
    UNIDIRECTIONAL = auto()
    SWAP = auto()


@dataclass
class _Request:
    index: int
    prompt: list[int]
    params: Any
    output: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    text: str = ""
    stop_reason: int | str | None = None
    finished: bool = False
    slot: int = -1

    def done(self) -> bool:
        return self.finished or len(self.output) >= self.params.max_tokens


@dataclass
class Processed:
    """One processed logits row: the tokens before the sampled one, raw and processed logits."""

    params: Any
    visible: list[int]
    raw: torch.Tensor
    processed: torch.Tensor


class _FakeEngine:
    def __init__(self, model: Any, processor: Any, *, max_num_seqs: int = 3, seed: int = 0, tokenizer: Any = None):
        self.model, self.processor, self.max_num_seqs = model, processor, max_num_seqs
        self.tokenizer = tokenizer  # given: outputs carry text, EOS and stop strings end requests
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.trace: list[Processed] = []
        self.generate_calls = 0

    @torch.inference_mode()
    def _logits(self, sequences: list[list[int]]) -> torch.Tensor:
        return torch.cat([self.model(torch.tensor([s])).logits[:, -1].float() for s in sequences])

    def _sample(self, request: _Request, row: torch.Tensor) -> int:
        params = request.params
        if getattr(params, "temperature", 1.0) == 0:
            return int(row.argmax())
        probs = torch.softmax(row / params.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _commit(self, request: _Request, token: int, row: torch.Tensor) -> None:
        """Append a sampled token and its processed_logits log-probabilities; end the request on a
        stop token (left out of the output), EOS (kept) or a stop string (cut from the text)."""
        params = request.params
        wanted = getattr(params, "logprobs", None)
        if wanted:
            top = {int(t): SimpleNamespace(logprob=float(row[t])) for t in row.topk(wanted).indices}
            top.setdefault(token, SimpleNamespace(logprob=float(row[token])))
            request.logprobs.append(top)
        if token in (getattr(params, "stop_token_ids", None) or []):
            request.stop_reason, request.finished = token, True
            return
        request.output.append(token)
        if self.tokenizer is None:
            return
        request.finished = token == self.tokenizer.eos_token_id
        request.text = self.tokenizer.decode(request.output,
                                             skip_special_tokens=getattr(params, "skip_special_tokens", True))
        for stop in getattr(params, "stop", None) or []:
            if stop in request.text:
                request.text = request.text[: request.text.index(stop)]
                request.stop_reason, request.finished = stop, True

    def generate(self, prompts: list[dict | str], params: Any, use_tqdm: bool = False) -> list[Any]:
        self.generate_calls += 1
        every = params if isinstance(params, list) else [params] * len(prompts)
        prompts = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False).input_ids}
                   if isinstance(p, str) else p for p in prompts]  # text prompts (no BOS in these tokenizers)
        groups = [[_Request(i, list(p["prompt_token_ids"]), sp) for _ in range(getattr(sp, "n", 1))]
                  for i, (p, sp) in enumerate(zip(prompts, every))]  # SamplingParams.n completions each
        self._run([r for group in groups for r in group])
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(r.output), text=r.text, logprobs=r.logprobs,
                                                         stop_reason=r.stop_reason) for r in group])
                for group in groups]

    def _run(self, waiting: list[_Request]) -> None:
        raise NotImplementedError


class FakeV1Engine(_FakeEngine):
    """``LLM.generate`` on vLLM's V1 model runner (persistent batch + ``update_state``)."""

    def _run(self, waiting: list[_Request]) -> None:
        batch: list[_Request | None] = []
        removed: list[int] = []
        while waiting or any(batch):
            added, moved = [], []
            while waiting and sum(r is not None for r in batch) < self.max_num_seqs:
                request = waiting.pop(0)
                index = min(removed) if removed else len(batch)  # _register_add_request
                if removed:
                    removed.remove(index)
                if index == len(batch):
                    batch.append(None)
                batch[index] = request
                added.append((index, request.params, request.prompt, request.output))
            # condense: the last live rows move down into the lowest holes
            for hole in sorted(removed):
                last = max((i for i, r in enumerate(batch) if r is not None), default=-1)
                if hole >= last:
                    break
                batch[hole], batch[last] = batch[last], None
                removed.remove(hole)
                moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            while batch and batch[-1] is None:
                batch.pop()
            live = [i for i, r in enumerate(batch) if r is not None]
            if len(live) > 1 and self.rng.random() < 0.5:  # swap_states: a reorder of two rows
                a, b = self.rng.sample(live, 2)
                batch[a], batch[b] = batch[b], batch[a]
                moved.append((a, b, MoveDirectionality.SWAP))
            update = BatchUpdate(len(batch), sorted(removed, reverse=True), added, moved)
            self.processor.update_state(update if (added or moved or removed) else None)
            removed = []  # BatchUpdateBuilder.get_and_reset
            sequences = [r.prompt + r.output for r in batch]
            raw = self._logits(sequences)
            processed = self.processor.apply(raw.clone())
            for i, request in enumerate(batch):
                self.trace.append(Processed(request.params, sequences[i], raw[i], processed[i]))
                self._commit(request, self._sample(request, processed[i]), processed[i])
            for i, request in enumerate(batch):
                if request.done():
                    batch[i] = None
                    removed.append(i)


class _FakeBuffer:
    """``StagedWriteTensor``/``UvaBackedTensor`` reduced to what processors read: ``.gpu``."""

    def __init__(self, *shape: int):
        self.gpu = torch.zeros(*shape, dtype=torch.int32)
        self.np = self.gpu.numpy()


class FakeV2Engine(_FakeEngine):
    """``LLM.generate`` on vLLM's V2 model runner (request slots + ``add_request``/``apply(ctx)``).

    Build the processor with :meth:`request_state` (the ``LogitsProcRequestState`` it reads)."""

    def __init__(self, model: Any, processor_cls: Any, *, max_num_seqs: int = 3, seed: int = 0,
                 max_model_len: int = 512, chunk_prompts_over: int = 64, vllm_config: Any = None,
                 tokenizer: Any = None):
        self.max_model_len, self.chunk_prompts_over = max_model_len, chunk_prompts_over
        self.req_states = self.request_state(model, max_num_seqs, max_model_len)
        self.free = list(range(max_num_seqs))  # RequestState.free_indices
        self.needs_processing = np.zeros(max_num_seqs, dtype=bool)
        super().__init__(model, processor_cls(vllm_config or SimpleNamespace(speculative_config=None),
                                              self.req_states), max_num_seqs=max_num_seqs, seed=seed,
                         tokenizer=tokenizer)

    @staticmethod
    def request_state(model: Any, max_num_reqs: int, max_model_len: int) -> Any:
        """``LogitsProcRequestState`` (interface.py l.28-61) over fake buffers."""
        return SimpleNamespace(device=torch.device("cpu"), max_num_reqs=max_num_reqs,
                               vocab_size=model.config.vocab_size,
                               all_token_ids=_FakeBuffer(max_num_reqs, max_model_len),
                               prompt_len=_FakeBuffer(max_num_reqs), prefill_len=_FakeBuffer(max_num_reqs),
                               total_len=_FakeBuffer(max_num_reqs))

    def _run(self, waiting: list[_Request]) -> None:
        running: list[_Request] = []
        computed: dict[int, int] = {}  # slot -> tokens already in the KV cache
        state = self.req_states
        while waiting or running:
            while waiting and len(running) < self.max_num_seqs:
                request = waiting.pop(0)
                request.slot = slot = self.free.pop()  # RequestState.add_request
                state.all_token_ids.gpu[slot, : len(request.prompt)] = torch.tensor(request.prompt)
                state.prompt_len.gpu[slot] = state.prefill_len.gpu[slot] = len(request.prompt)
                state.total_len.gpu[slot] = len(request.prompt)
                computed[slot] = 0
                self.needs_processing[slot] = self.processor.add_request(slot, request.params)
                running.append(request)
            self.rng.shuffle(running)  # rows are reordered every step
            slots = np.array([r.slot for r in running], dtype=np.intp)
            seq_lens = []
            for r in running:  # num_computed + num_scheduled; a long prompt is prefilled in two chunks
                total = int(state.total_len.gpu[r.slot])
                first_chunk = computed[r.slot] == 0 and total > self.chunk_prompts_over
                seq_lens.append(total // 2 if first_chunk else total)
            seq_lens_np = np.array(seq_lens, dtype=np.int32)
            sequences = [state.all_token_ids.gpu[s, :n].tolist() for s, n in zip(slots, seq_lens)]
            raw = self._logits(sequences)
            processed = raw
            if self.needs_processing[slots].any():
                idx = torch.from_numpy(slots.astype(np.int64)).to(torch.int32)
                ctx = SimpleNamespace(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=slots,
                                      expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
                                      input_ids=torch.tensor([s[-1] for s in sequences]),
                                      pos=torch.tensor(seq_lens_np - 1), seq_lens_upper_bound_np=seq_lens_np)
                processed = self.processor.apply(torch.empty_like(raw, dtype=torch.float32).copy_(raw), ctx)
            for row, request in enumerate(list(running)):
                self.trace.append(Processed(request.params, sequences[row], raw[row], processed[row]))
                token = self._sample(request, processed[row])
                slot, total = request.slot, int(state.total_len.gpu[request.slot])
                computed[slot] = seq_lens[row]
                if seq_lens[row] < total:
                    continue  # a partial prefill chunk: no output token
                self._commit(request, token, processed[row])
                state.all_token_ids.gpu[slot, total] = token  # post_update
                state.total_len.gpu[slot] = total + 1
                if request.done():
                    running.remove(request)
                    self.free.append(slot)  # RequestState.remove_request; processors are not told
