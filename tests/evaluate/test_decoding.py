"""Decoding modes: reasoning extraction, the thinking prefix, sharding, and the vLLM engine's
arguments (vLLM itself only runs in the GPU image)."""

from __future__ import annotations

import importlib

import pyarrow.parquet as pq
import pytest
import torch

from components.common import prompts
from components.common.config import parse_section
from components.common.constrained_vllm import VLLM_PROCESSOR_FQCN
from components.evaluate.config import EvaluateConfig
from components.evaluate.decoding import (
    TransformersDecoder,
    decode_all,
    decode_mode,
    split_reasoning,
    vllm_engine_kwargs,
)


def test_split_reasoning():
    assert split_reasoning("<think>\nlikes pens\n</think>\n\n<a_1><b_2><c_3>") == ("likes pens", True)
    assert split_reasoning("  <think>\nstill going and") == ("still going and", False)
    assert split_reasoning("no think tag</think>") == ("no think tag", True)


def _histories(eval_inputs, n):
    samples = pq.read_table(eval_inputs.samples).to_pandas()
    sid_map = pq.read_table(eval_inputs.sid_map).to_pandas()
    sid_of = dict(zip(sid_map["item_id"], sid_map["sid"]))
    test = samples[samples["split"] == "test"].head(n)
    return [[sid_of[i] for i in h] for h in test["history"]], sid_map["sid"].tolist()


def test_thinking_mode_closes_a_cut_think_block(eval_inputs, monkeypatch):
    cfg = parse_section(EvaluateConfig, {"max_reasoning_tokens": 3, "beam_width": 4}, "evaluate")
    histories, sids = _histories(eval_inputs, 2)
    decoder = TransformersDecoder(eval_inputs.model, sids, cfg, torch.device("cpu"))
    seen = []
    beam = decoder.beam
    monkeypatch.setattr(decoder, "beam", lambda texts: seen.extend(texts) or beam(texts))
    results = decode_mode(decoder, histories, "thinking", cfg)
    for text, result, history in zip(seen, results, histories):
        base = prompts.render_prompt(decoder.tokenizer, prompts.reasoning_messages(history))
        assert text == base + prompts.think_block(result.reasoning)  # exactly the training format
        assert text.endswith("\n</think>\n\n")
        assert result.reasoning_tokens <= 3 and len(result.sids) == 4
        assert result.reasoning_closed is False  # a random tiny model does not close it in 3 tokens


def test_two_shards_give_the_same_results_as_one(eval_inputs, tmp_path):
    histories, sids = _histories(eval_inputs, 5)
    one = parse_section(EvaluateConfig, {"modes": ["direct"], "beam_width": 5, "device": "cpu"}, "evaluate")
    two = parse_section(EvaluateConfig, {"modes": ["direct"], "beam_width": 5, "device": "cpu", "shards": 2},
                        "evaluate")
    single = decode_all(eval_inputs.model, sids, histories, one, 0, tmp_path)["direct"]
    sharded = decode_all(eval_inputs.model, sids, histories, two, 0, tmp_path)["direct"]
    assert [d.sids for d in sharded] == [d.sids for d in single]
    assert [s for d in sharded for s in d.scores] == pytest.approx([s for d in single for s in d.scores], abs=1e-4)


def test_vllm_engine_arguments():
    cfg = parse_section(EvaluateConfig, {"engine": "vllm", "beam_width": 50, "dtype": "bfloat16",
                                         "vllm": {"gpu_memory_utilization": 0.7}}, "evaluate")
    kwargs = vllm_engine_kwargs("/models/m", cfg, seed=1)
    assert kwargs["logits_processors"] == [VLLM_PROCESSOR_FQCN]
    assert kwargs["logprobs_mode"] == "processed_logits" and kwargs["enable_prefix_caching"] is True
    assert kwargs["max_logprobs"] == 50 and kwargs["gpu_memory_utilization"] == 0.7
    assert kwargs["dtype"] == "bfloat16" and kwargs["max_model_len"] == 2048
    module, name = VLLM_PROCESSOR_FQCN.split(":")
    assert hasattr(importlib.import_module(module), name)


@pytest.mark.parametrize("engine, shards, processes", [("transformers", 1, 0), ("transformers", 2, 2),
                                                       ("vllm", 1, 1), ("vllm", 2, 2)])
def test_vllm_decodes_in_processes_of_its_own(monkeypatch, tmp_path, engine, shards, processes):
    """A vLLM engine's GPU memory is released only when its process exits, and a scheduled run
    decodes two models in a row: vLLM always decodes in child processes, one per shard."""
    from components.evaluate import decoding

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
    cfg = parse_section(EvaluateConfig, {"engine": engine, "device": "auto", "shards": shards, "modes": ["direct"]},
                        "evaluate")
    histories = [["<a_1><b_1>"] * n for n in (1, 2, 3, 4)]
    out = decoding.decode_all("model", ["<a_1><b_1>"], histories, cfg, 0, tmp_path)
    assert out == {"direct": [1, 2, 3, 4]}  # row order kept across shards
    assert sum(pools) == processes
