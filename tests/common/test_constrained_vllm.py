"""The trie logits processors for both of vLLM 0.31's model runners, on a CPU.

vLLM is CUDA-only, so each processor is driven by a fake of its runner (tests/common/fake_vllm.py:
scheduling, request add/remove/reorder and the processor calls as the pinned vLLM source does)
running a tiny HF model. Every processed row is checked against the transformers trie processor
on the same tokens, the beam search through either runner must rank exactly as the transformers
beam search, and the engine arguments must pin the runner whose processor they name.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components.common import constrained_vllm
from components.common.constrained import SidTrie, SidTrieLogitsProcessor, UnknownPrefixError, constrained_beam_search
from components.common.constrained_vllm import (
    EXTRA_EOS,
    EXTRA_START,
    EXTRA_TRIE,
    MODEL_RUNNER_ENV,
    V1_PROCESSOR_FQCN,
    V2_PROCESSOR_FQCN,
    SidTrieV1LogitsProcessor,
    SidTrieV2LogitsProcessor,
    processor_for_runner,
    trie_engine_kwargs,
    vllm_constrained_beam_search,
)
from tests.common.conftest import sid_prompts
from tests.common.fake_vllm import BatchUpdate, FakeV1Engine, FakeV2Engine, MoveDirectionality


def params(**kwargs):
    """A ``SamplingParams`` stand-in with vLLM's defaults for the fields the fakes read."""
    return SimpleNamespace(**{"n": 1, "temperature": 1.0, "max_tokens": 16, "logprobs": None, "extra_args": None,
                              "stop_token_ids": None, **kwargs})


def constrained(path, start, eos=None, **kwargs):
    extra = {EXTRA_TRIE: str(path), EXTRA_START: start, **({EXTRA_EOS: eos} if eos is not None else {})}
    return params(extra_args=extra, **kwargs)


def engine(runner, model, **kwargs):
    if runner == "v1":
        return FakeV1Engine(model, SidTrieV1LogitsProcessor(None, torch.device("cpu"), False), **kwargs)
    return FakeV2Engine(model, SidTrieV2LogitsProcessor, **kwargs)


RUNNERS = ["v1", "v2"]


# ----------------------------------------------------------------------------------------------
# Which runner, which processor
# ----------------------------------------------------------------------------------------------


def test_the_runner_is_pinned_and_its_processor_named():
    environ: dict[str, str] = {}
    assert processor_for_runner(environ) == V2_PROCESSOR_FQCN and environ == {MODEL_RUNNER_ENV: "1"}
    assert processor_for_runner({MODEL_RUNNER_ENV: "0"}) == V1_PROCESSOR_FQCN  # an operator's choice is kept
    assert processor_for_runner({MODEL_RUNNER_ENV: "1"}) == V2_PROCESSOR_FQCN
    with pytest.raises(ValueError, match=f"{MODEL_RUNNER_ENV}='yes'"):
        processor_for_runner({MODEL_RUNNER_ENV: "yes"})
    environ = {}
    assert trie_engine_kwargs(50, environ) == {"logits_processors": [V2_PROCESSOR_FQCN],
                                               "logprobs_mode": "processed_logits", "enable_prefix_caching": True,
                                               "max_logprobs": 50}
    assert environ[MODEL_RUNNER_ENV] == "1"
    assert trie_engine_kwargs(4, {MODEL_RUNNER_ENV: "0"})["logits_processors"] == [V1_PROCESSOR_FQCN]
    assert trie_engine_kwargs(4, {})["max_logprobs"] == 20


def test_the_classes_have_the_signatures_of_the_pinned_interfaces():
    """What vLLM 0.31's loaders instantiate and call (vllm/v1/sample/logits_processor/interface.py;
    vllm/v1/worker/gpu/sample/logits_processor/interface.py)."""
    def names(fn):
        return list(inspect.signature(fn).parameters)

    module, name = V1_PROCESSOR_FQCN.split(":")
    assert getattr(constrained_vllm, name) is SidTrieV1LogitsProcessor and module == constrained_vllm.__name__
    assert names(SidTrieV1LogitsProcessor.__init__) == ["self", "vllm_config", "device", "is_pin_memory"]
    assert names(SidTrieV1LogitsProcessor.update_state) == ["self", "batch_update"]
    assert names(SidTrieV1LogitsProcessor.apply) == ["self", "logits"]
    assert names(SidTrieV1LogitsProcessor.is_argmax_invariant) == ["self"]
    assert getattr(constrained_vllm, V2_PROCESSOR_FQCN.split(":")[1]) is SidTrieV2LogitsProcessor
    assert names(SidTrieV2LogitsProcessor.__init__) == ["self", "vllm_config", "req_states"]
    assert names(SidTrieV2LogitsProcessor.add_request) == ["self", "req_idx", "sampling_params"]
    assert names(SidTrieV2LogitsProcessor.apply) == ["self", "logits", "ctx"]
    for cls in (SidTrieV1LogitsProcessor, SidTrieV2LogitsProcessor):
        assert names(cls.validate_params) == ["sampling_params"]  # a classmethod


# ----------------------------------------------------------------------------------------------
# Masks through each runner's request bookkeeping, against the transformers processor
# ----------------------------------------------------------------------------------------------


def hf_reference(trie, constraint, visible, raw):
    """What the transformers trie processor makes of the same tokens, as log-probabilities."""
    if len(visible) < constraint.start:
        return raw
    processor = SidTrieLogitsProcessor(trie, constraint.start, eos_token_id=constraint.eos)
    masked = processor(torch.tensor([visible]), raw[None].clone())[0]
    return torch.log_softmax(raw, -1).masked_fill(~torch.isfinite(masked), float("-inf"))


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_processed_row_matches_the_transformers_processor(runner, sid_model, tmp_path):
    """Constrained generations (from the SID start, or continuing a SID prefix inside the prompt)
    mixed with free requests, two running at a time: requests enter, leave and reuse rows/slots,
    rows are reordered, long prompts are prefilled in two chunks (V2)."""
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids)
    trie.save(tmp_path / "trie.pt")
    texts = sid_prompts(tok, sids)
    prompt_ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    sid_ids = tok(sids[4], add_special_tokens=False).input_ids
    eos = tok.eos_token_id
    requests = [
        (prompt_ids[0], constrained(tmp_path / "trie.pt", len(prompt_ids[0]), eos, max_tokens=4)),
        (prompt_ids[1][:5], params(max_tokens=3)),  # free, short prompt
        (prompt_ids[2] + sid_ids[:2], constrained(tmp_path / "trie.pt", len(prompt_ids[2]), eos, max_tokens=2)),
        (prompt_ids[1], constrained(tmp_path / "trie.pt", len(prompt_ids[1]), max_tokens=3, temperature=0.0)),
        (prompt_ids[0][:7], params(max_tokens=2, temperature=0.0)),  # free, reuses a constrained row/slot
        (prompt_ids[2] + sid_ids, constrained(tmp_path / "trie.pt", len(prompt_ids[2]), eos, max_tokens=1)),
    ]
    llm = engine(runner, model, max_num_seqs=2, seed=1, chunk_prompts_over=40) if runner == "v2" else engine(
        runner, model, max_num_seqs=2, seed=1)
    outputs = llm.generate([{"prompt_token_ids": p} for p, _ in requests], [sp for _, sp in requests])
    checked = 0
    for row in llm.trace:
        constraint = constrained_vllm.parse_constraint(row.params)
        if constraint is None:
            assert torch.equal(row.processed, row.raw)  # free requests are never touched
            continue
        expected = hf_reference(trie, constraint, row.visible, row.raw)
        assert torch.equal(torch.isfinite(row.processed), torch.isfinite(expected))
        assert torch.allclose(row.processed, expected, atol=1e-5)
        checked += 1
    assert checked >= 9
    generated_sid = tok.decode(outputs[0].outputs[0].token_ids)
    assert generated_sid.startswith(tuple(sids)) and generated_sid.endswith(tok.eos_token)
    assert tok.decode(sid_ids[:2] + outputs[2].outputs[0].token_ids).removesuffix(tok.eos_token) in sids
    assert tok.decode(outputs[5].outputs[0].token_ids) == tok.eos_token  # a complete SID: only EOS


def test_v2_slot_reuse_resets_the_slot(sid_model, tmp_path):
    """vLLM's V2 runner recycles a finished request's slot without telling the processors."""
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids)
    trie.save(tmp_path / "trie.pt")
    req_states = FakeV2Engine.request_state(model, 2, 64)
    processor = SidTrieV2LogitsProcessor(SimpleNamespace(speculative_config=None), req_states)
    assert processor.add_request(1, constrained(tmp_path / "trie.pt", 0)) is True
    assert processor.add_request(1, params()) is False  # a free request now holds slot 1
    logits = torch.randn(1, model.config.vocab_size)
    ctx = SimpleNamespace(idx_mapping_np=np.array([1]), seq_lens_upper_bound_np=np.array([3], dtype=np.int32))
    assert torch.equal(processor.apply(logits.clone(), ctx), logits)


def test_v1_batch_updates_by_hand(tmp_path):
    """The V1 protocol step by step: rows added with live output lists, swapped, moved, removed."""
    trie = SidTrie([(1, 2), (1, 3), (4, 0)], vocab_size=6)
    trie.save(tmp_path / "t.pt")
    proc = SidTrieV1LogitsProcessor(None, torch.device("cpu"), False)
    out_a, out_b, out_c = [], [7], []
    proc.update_state(BatchUpdate(3, [], [
        (0, constrained(tmp_path / "t.pt", 2), [9, 9], out_a),          # constrained, at the SID start
        (1, params(), [9], out_b),                                      # free request
        (2, constrained(tmp_path / "t.pt", 1, eos=5), [9], out_c),      # constrained
    ], []))
    logits = torch.randn(3, 8)
    result = proc.apply(logits.clone())
    assert torch.isfinite(result[0]).nonzero().flatten().tolist() == [1, 4]
    assert torch.equal(result[1], logits[1])
    assert result[0, 1] == pytest.approx(torch.log_softmax(logits[0], -1)[1].item())  # true log-prob
    out_a.append(1)  # vLLM appends sampled tokens to the live output list
    out_c.extend([4, 0])
    proc.update_state(BatchUpdate(3, [], [], [(0, 2, MoveDirectionality.SWAP)]))
    result = proc.apply(torch.randn(3, 8))
    assert torch.isfinite(result[2]).nonzero().flatten().tolist() == [2, 3]  # request A, after <1>
    assert torch.isfinite(result[0]).nonzero().flatten().tolist() == [5]     # request C: SID done -> EOS
    proc.update_state(BatchUpdate(2, [0], [], [(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert set(proc.rows) == {0} and proc.rows[0].output is out_a
    out_a.append(0)  # <1><0> is not a SID
    with pytest.raises(UnknownPrefixError):
        proc.apply(torch.randn(2, 8))


@pytest.mark.parametrize("runner", RUNNERS)
def test_unknown_prefixes_and_missing_eos_raise(runner, sid_model, tmp_path):
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids[:5])
    trie.save(tmp_path / "trie.pt")
    outside = tok(next(s for s in sids if s not in sids[:5]), add_special_tokens=False).input_ids
    known = tok(sids[0], add_special_tokens=False).input_ids
    with pytest.raises(UnknownPrefixError):  # the prompt already holds an unknown SID prefix
        engine(runner, model).generate([{"prompt_token_ids": [5, 6] + outside}],
                                       [constrained(tmp_path / "trie.pt", 2, max_tokens=1)])
    with pytest.raises(UnknownPrefixError, match="without an EOS"):  # a complete SID, no EOS to allow
        engine(runner, model).generate([{"prompt_token_ids": [5, 6] + known}],
                                       [constrained(tmp_path / "trie.pt", 2, max_tokens=1)])


def test_extra_args_are_validated_at_admission():
    for cls in (SidTrieV1LogitsProcessor, SidTrieV2LogitsProcessor):
        with pytest.raises(ValueError, match=EXTRA_START):
            cls.validate_params(params(extra_args={EXTRA_TRIE: "x", EXTRA_START: -1}))
        with pytest.raises(ValueError, match=EXTRA_TRIE):
            cls.validate_params(params(extra_args={EXTRA_TRIE: 3, EXTRA_START: 0}))
        with pytest.raises(ValueError, match=EXTRA_EOS):
            cls.validate_params(params(extra_args={EXTRA_TRIE: "x", EXTRA_START: 0, EXTRA_EOS: True}))
        cls.validate_params(params())


def test_v2_refuses_speculative_decoding():
    req_states = SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(ValueError, match="speculative decoding"):
        SidTrieV2LogitsProcessor(SimpleNamespace(speculative_config=object()), req_states)


# ----------------------------------------------------------------------------------------------
# The beam search through either runner
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_vllm_beam_search_matches_the_transformers_one(runner, sid_model, tmp_path):
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids)
    trie.save(tmp_path / "trie.pt")
    texts = sid_prompts(tok, sids)
    llm = engine(runner, model, max_num_seqs=4)
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    got = vllm_constrained_beam_search(llm, ids, trie, str(tmp_path / "trie.pt"), num_beams=6,
                                       sampling_params=params)
    expected = constrained_beam_search(model, tok, texts, trie, num_beams=6)
    for g, e in zip(got, expected):
        assert g.sids == e.sids
        assert g.scores == pytest.approx(e.scores, abs=1e-4)
    assert llm.generate_calls == trie.depth  # every prompt's beams in one call per SID position
