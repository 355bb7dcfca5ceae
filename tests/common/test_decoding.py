"""The shared decoders: reasoning extraction, the thinking prefix, vLLM given whole shards (on a
fake of vLLM's V2 runner, against the transformers engine), engine arguments, and the process
per shard."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from components.common import decoding, prompts
from components.common.constrained_vllm import MODEL_RUNNER_ENV, V2_PROCESSOR_FQCN, SidTrieV2LogitsProcessor
from components.common.decoding import (
    TransformersDecoder,
    VllmDecoder,
    decode_mode,
    split_reasoning,
    vllm_engine_kwargs,
)
from components.common.decoding_config import DecoderSettings
from tests.common.fake_vllm import FakeV2Engine


@pytest.fixture
def unpinned_runner(monkeypatch):
    """No VLLM_USE_V2_MODEL_RUNNER in the environment; whatever the test sets is undone after it."""
    monkeypatch.setenv(MODEL_RUNNER_ENV, "placeholder")
    monkeypatch.delenv(MODEL_RUNNER_ENV)


def histories(sids, n):
    return [sids[i:i + 1 + i % 3] for i in range(n)]


def test_split_reasoning():
    assert split_reasoning("<think>\nlikes pens\n</think>\n\n<a_1><b_2><c_3>") == ("likes pens", True)
    assert split_reasoning("  <think>\nstill going and") == ("still going and", False)
    assert split_reasoning("no think tag</think>") == ("no think tag", True)


def test_thinking_mode_closes_a_cut_think_block(sid_model_dir, sid_model, monkeypatch):
    _, _, sids = sid_model
    settings = DecoderSettings(max_reasoning_tokens=3, beam_width=4, device="cpu")
    decoder = TransformersDecoder(str(sid_model_dir), sids, settings, torch.device("cpu"))
    seen = []
    beam = decoder.beam
    monkeypatch.setattr(decoder, "beam", lambda texts: seen.extend(texts) or beam(texts))
    rows = histories(sids, 2)
    results = decode_mode(decoder, rows, "thinking")
    for text, result, history in zip(seen, results, rows):
        base = prompts.render_prompt(decoder.tokenizer, prompts.reasoning_messages(history))
        assert text == base + prompts.think_block(result.reasoning)  # exactly the training format
        assert text.endswith("\n</think>\n\n")
        assert result.reasoning_tokens <= 3 and len(result.sids) == 4
        assert result.reasoning_closed is False  # a random tiny model does not close it in 3 tokens


@pytest.mark.parametrize("mode", ["thinking", "direct"])
def test_vllm_takes_a_whole_shard_per_call_and_agrees_with_transformers(mode, sid_model_dir, sid_model, tmp_path):
    """vLLM schedules its own batches: the HF batch sizes must not chunk its calls. One generate
    call for all the reasoning, one per SID position for all the beams, the same results as the
    transformers engine decoding 2 prompts at a time."""
    model, tok, sids = sid_model
    settings = DecoderSettings(beam_width=4, batch_size=2, reasoning_batch_size=2, max_reasoning_tokens=6,
                               device="cpu")
    rows = histories(sids, 5)
    llm = FakeV2Engine(model, SidTrieV2LogitsProcessor, max_num_seqs=8, tokenizer=tok)
    vllm = VllmDecoder(str(sid_model_dir), sids, settings, tmp_path, seed=0, llm=llm,
                       sampling_params=lambda **kw: SimpleNamespace(**kw))
    got = decode_mode(vllm, rows, mode)
    assert llm.generate_calls == (1 if mode == "thinking" else 0) + vllm.trie.depth
    hf = decode_mode(TransformersDecoder(str(sid_model_dir), sids, settings, torch.device("cpu")), rows, mode)
    for g, h in zip(got, hf, strict=True):
        assert (g.reasoning, g.reasoning_closed, g.reasoning_tokens) == (h.reasoning, h.reasoning_closed,
                                                                          h.reasoning_tokens)
        assert g.sids == h.sids
        assert g.scores == pytest.approx(h.scores, abs=1e-4)


def test_vllm_engine_arguments(unpinned_runner):
    settings = DecoderSettings(engine="vllm", beam_width=50, dtype="bfloat16",
                               vllm={"gpu_memory_utilization": 0.7})
    kwargs = vllm_engine_kwargs("/models/m", settings, seed=1)
    assert kwargs["logits_processors"] == [V2_PROCESSOR_FQCN]  # the pinned runner's processor
    assert kwargs["logprobs_mode"] == "processed_logits" and kwargs["enable_prefix_caching"] is True
    assert kwargs["max_logprobs"] == 50 and kwargs["gpu_memory_utilization"] == 0.7
    assert kwargs["dtype"] == "bfloat16" and kwargs["max_model_len"] == 2048 and kwargs["seed"] == 1
    module, name = V2_PROCESSOR_FQCN.split(":")
    assert hasattr(importlib.import_module(module), name)


@pytest.mark.parametrize("engine, shards, processes", [("transformers", 1, 0), ("transformers", 2, 2),
                                                       ("vllm", 1, 1), ("vllm", 2, 2)])
def test_vllm_decodes_in_processes_of_its_own(monkeypatch, tmp_path, engine, shards, processes):
    """A vLLM engine's GPU memory is released only when its process exits, and a caller may decode
    two models in a row: vLLM always decodes in child processes, one per shard."""
    pools = []

    class RecordingPool:  # stands in for the spawn pool: runs the shards here, counts workers
        def __init__(self, max_workers, mp_context):
            pools.append(max_workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, jobs):
            return [fn(job) for job in jobs]

    monkeypatch.setattr(decoding, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(decoding, "run_shard", lambda job: {"direct": [len(h) for h in job.histories]})
    rows = [["<a_1><b_1>"] * n for n in (1, 2, 3, 4)]
    out = decoding.decode_all("model", ["<a_1><b_1>"], rows, ["direct"], DecoderSettings(engine=engine),
                              shards=shards, seed=0, workdir=tmp_path)
    assert out == {"direct": [1, 2, 3, 4]}  # row order kept across shards
    assert sum(pools) == processes


def test_settings_are_validated():
    with pytest.raises(ValueError, match="beam_width"):
        DecoderSettings(beam_width=0)
    with pytest.raises(ValueError, match="engine"):
        DecoderSettings(engine="tgi")
