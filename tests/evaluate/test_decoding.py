"""Evaluation's decoding: its config mapped onto the shared decoders (tests/common/test_decoding.py
covers the engines), and sharding through the evaluate entry point."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from components.common.config import parse_section
from components.common.decoding_config import DecoderSettings
from components.evaluate.config import EvaluateConfig
from components.evaluate.decoding import decode_all, decoder_settings


def _histories(eval_inputs, n):
    samples = pq.read_table(eval_inputs.samples).to_pandas()
    sid_map = pq.read_table(eval_inputs.sid_map).to_pandas()
    sid_of = dict(zip(sid_map["item_id"], sid_map["sid"]))
    test = samples[samples["split"] == "test"].head(n)
    return [[sid_of[i] for i in h] for h in test["history"]], sid_map["sid"].tolist()


def test_the_evaluate_config_chooses_the_decoder():
    cfg = parse_section(EvaluateConfig, {"engine": "vllm", "device": "cuda", "dtype": "bfloat16", "beam_width": 20,
                                         "batch_size": 3, "reasoning_batch_size": 2, "max_reasoning_tokens": 64,
                                         "vllm": {"gpu_memory_utilization": 0.7, "max_model_len": 4096,
                                                  "tensor_parallel_size": 2, "enforce_eager": True}}, "evaluate")
    assert decoder_settings(cfg) == DecoderSettings(
        engine="vllm", device="cuda", dtype="bfloat16", beam_width=20, batch_size=3, reasoning_batch_size=2,
        max_reasoning_tokens=64, vllm={"gpu_memory_utilization": 0.7, "max_model_len": 4096,
                                       "tensor_parallel_size": 2, "enforce_eager": True})
    # every engine-level field of the evaluate config reaches the decoder
    carried = set(DecoderSettings.model_fields) - {"vllm"}
    assert carried <= set(EvaluateConfig.model_fields)
    assert decoder_settings(cfg).vllm.model_dump() == cfg.vllm.model_dump()


def test_two_shards_give_the_same_results_as_one(eval_inputs, tmp_path):
    histories, sids = _histories(eval_inputs, 5)
    one = parse_section(EvaluateConfig, {"modes": ["direct"], "beam_width": 5, "device": "cpu"}, "evaluate")
    two = parse_section(EvaluateConfig, {"modes": ["direct"], "beam_width": 5, "device": "cpu", "shards": 2},
                        "evaluate")
    single = decode_all(eval_inputs.model, sids, histories, one, 0, tmp_path)["direct"]
    sharded = decode_all(eval_inputs.model, sids, histories, two, 0, tmp_path)["direct"]
    assert [d.sids for d in sharded] == [d.sids for d in single]
    assert [s for d in sharded for s in d.scores] == pytest.approx([s for d in single for s in d.scores], abs=1e-4)
