"""The served model on its GPU path, chosen by the model's settings (``engine: vllm``): one vLLM
engine sized for the widest beam, constrained by the model's own trie artifact, answering as the
transformers path does. vLLM is CUDA-only: the engine here is the stand-in of vLLM 0.31's V2 model
runner (``tests/common/fake_vllm.py``), built from the arguments the decoder gives ``vllm.LLM``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from components.common import artifacts
from components.common.constrained import SidTrie
from components.common.constrained_vllm import MODEL_RUNNER_ENV, V2_PROCESSOR_FQCN
from components.common.modeling import load_causal_lm
from tests.common.fake_vllm import FakeV2Engine


@pytest.fixture
def fake_vllm(monkeypatch) -> list:
    """``vllm`` as the decoder imports it: ``LLM(**engine kwargs)`` -> the V2 runner stand-in over the
    model folder it names, with the processor class it names; the engines built are recorded."""
    monkeypatch.delenv(MODEL_RUNNER_ENV, raising=False)  # vLLM 0.31's default runner: V2
    engines = []

    def llm(**kwargs):
        model, tokenizer = load_causal_lm(kwargs["model"])
        module, name = kwargs["logits_processors"][0].split(":")
        engine = FakeV2Engine(model.eval(), getattr(importlib.import_module(module), name), max_num_seqs=8,
                              tokenizer=tokenizer)
        engine.kwargs = kwargs
        engines.append(engine)
        return engine

    sampling_params = SimpleNamespace  # vllm.SamplingParams(**kwargs): the fake reads them as attributes
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=llm, SamplingParams=sampling_params))
    return engines


def test_engine_vllm_serves_what_transformers_serves(fake_vllm, servable, served, eval_inputs):
    import mlflow

    model = mlflow.pyfunc.load_model(str(servable), model_config={"engine": "vllm", "device": "auto"})
    (engine,) = fake_vllm
    assert engine.kwargs["logits_processors"] == [V2_PROCESSOR_FQCN]
    assert engine.kwargs["max_logprobs"] == 50  # one engine for every request, sized for max_beam_width
    assert engine.kwargs["model"].endswith("artifacts/model")  # the logged weights
    served_trie = SidTrie.load(servable / "artifacts" / "sid_trie.pt")
    assert model.unwrap_python_model().decoder.trie.labels == served_trie.labels  # the artifact constrains it
    # only vLLM gets a scratch folder: one for transformers would outlive a killed server
    assert Path(model.unwrap_python_model()._workdir.name).is_dir() and served.unwrap_python_model()._workdir is None
    samples = artifacts.read_samples(eval_inputs.samples).split("test")[-3:]
    frame = pd.DataFrame({"history": [list(s.history) for s in samples]})
    for params in ({"k": 5, "beam_width": 8}, {"k": 3, "beam_width": 4, "mode": "thinking",
                                               "max_reasoning_tokens": 4}):
        got, expected = model.predict(frame, params=params), served.predict(frame, params=params)
        assert [list(r) for r in got["item_ids"]] == [list(r) for r in expected["item_ids"]]
        for g, e in zip(got["scores"], expected["scores"]):
            assert list(g) == pytest.approx(list(e), abs=1e-4)
        assert list(got["reasoning"]) == list(expected["reasoning"])
