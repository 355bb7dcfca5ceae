"""Trie-constrained decoding: the vectorised trie against a brute-force reference (property
based), beam search against exhaustive scoring on a tiny model, and loud failures (the vLLM
processors: test_constrained_vllm.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from components.common.constrained import (
    MissingSidTokensError,
    SidTrie,
    SidTrieLogitsProcessor,
    UnknownPrefixError,
    constrained_beam_search,
)
from tests.common.conftest import sid_prompts
from tests.tiny_sid_model import exhaustive_scores

# ----------------------------------------------------------------------------------------------
# The trie against a brute-force reference
# ----------------------------------------------------------------------------------------------


@st.composite
def tries(draw):
    vocab = draw(st.integers(2, 12))
    depth = draw(st.integers(1, 4))
    seqs = draw(st.lists(st.tuples(*[st.integers(0, vocab - 1)] * depth), min_size=1, max_size=40, unique=True))
    # prefixes to query: true prefixes of SIDs and arbitrary token tuples (mostly unknown)
    t = draw(st.integers(0, depth - 1))
    known = [s[:t] for s in draw(st.lists(st.sampled_from(seqs), min_size=1, max_size=8))]
    arbitrary = draw(st.lists(st.tuples(*[st.integers(0, vocab - 1)] * t), max_size=4))
    return vocab, seqs, t, known, arbitrary


def brute_allowed(seqs, prefix):
    return {s[len(prefix)] for s in seqs if s[: len(prefix)] == prefix}


@settings(max_examples=150, deadline=None)
@given(tries())
def test_mask_matches_brute_force(case):
    vocab, seqs, t, known, arbitrary = case
    trie = SidTrie(seqs, vocab)
    rows = known + [p for p in arbitrary if brute_allowed(seqs, p)]
    prefixes = torch.tensor(rows, dtype=torch.long).reshape(len(rows), t)
    mask = trie.allowed_mask(trie.walk(prefixes), t)
    for r, prefix in enumerate(rows):
        assert set(torch.nonzero(mask[r]).flatten().tolist()) == brute_allowed(seqs, prefix)
    for prefix in arbitrary:
        if not brute_allowed(seqs, prefix):  # not a prefix of any SID: must raise, never mask nothing
            with pytest.raises(UnknownPrefixError):
                trie.walk(torch.tensor([prefix], dtype=torch.long).reshape(1, t))


@settings(max_examples=100, deadline=None)
@given(tries())
def test_leaves_are_the_sequences(case):
    vocab, seqs, _, _, _ = case
    labels = [f"s{i}" for i in range(len(seqs))]
    trie = SidTrie(seqs, vocab, labels=labels)
    leaves = trie.walk(torch.tensor(seqs, dtype=torch.long))
    assert trie.label_of(leaves) == labels
    assert trie.max_degree == [
        max(len(brute_allowed(seqs, s[:d])) for s in seqs) for d in range(len(seqs[0]))]


def test_dead_rows_stay_dead_and_allow_nothing():
    trie = SidTrie([(0, 1), (0, 2), (3, 1)], vocab_size=5)
    nodes = trie.advance(torch.tensor([0, -1]), 0, torch.tensor([3, 4]))  # token 4 ignored: row is dead
    assert nodes[1] == -1
    mask = trie.allowed_mask(nodes, 1)
    assert mask[0].nonzero().flatten().tolist() == [1] and not mask[1].any()


def test_unknown_prefix_raises_with_the_prefix():
    trie = SidTrie([(0, 1, 2), (0, 2, 2)], vocab_size=4)
    with pytest.raises(UnknownPrefixError, match=r"row 1.*never falls back"):
        trie.walk(torch.tensor([[0, 1], [0, 3]]))
    with pytest.raises(UnknownPrefixError):  # out-of-vocabulary ids cannot alias another edge
        trie.advance(torch.tensor([0]), 0, torch.tensor([4 + 0]))


def test_duplicates_and_bad_input_are_rejected():
    with pytest.raises(ValueError, match="duplicate SID"):
        SidTrie([(1, 2), (1, 2)], vocab_size=3, labels=["x", "y"])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        SidTrie([(1, 3)], vocab_size=3)
    with pytest.raises(ValueError, match="non-empty"):
        SidTrie([], vocab_size=3)


def test_save_load_roundtrip(tmp_path):
    trie = SidTrie([(0, 1), (2, 3), (2, 0)], vocab_size=4, labels=["a", "b", "c"])
    trie.save(tmp_path / "trie.pt")
    loaded = SidTrie.load(tmp_path / "trie.pt")
    nodes = torch.tensor([0, 1])
    assert torch.equal(loaded.allowed_mask(nodes, 1), trie.allowed_mask(nodes, 1))
    assert loaded.labels == trie.labels


# ----------------------------------------------------------------------------------------------
# Beam search on a tiny model
# ----------------------------------------------------------------------------------------------


def test_beam_search_equals_exhaustive_scoring(sid_model):
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids)
    texts = sid_prompts(tok, sids)
    ranked = constrained_beam_search(model, tok, texts, trie, num_beams=50, batch_size=2)
    for text, result in zip(texts, ranked):
        reference = exhaustive_scores(model, tok, text, sids)
        best_first = sorted(reference, key=reference.get, reverse=True)
        assert result.sids == best_first  # beam >= catalog: the search is exhaustive
        assert result.scores == pytest.approx([reference[s] for s in best_first], abs=1e-4)
        assert result.token_ids.shape == (len(sids), 3)


def test_narrow_beam_returns_valid_sids_with_exact_scores(sid_model):
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids)
    texts = sid_prompts(tok, sids)
    for result, text in zip(constrained_beam_search(model, tok, texts, trie, num_beams=5), texts):
        reference = exhaustive_scores(model, tok, text, sids)
        assert len(result.sids) == 5 and set(result.sids) <= set(sids)
        assert result.scores == sorted(result.scores, reverse=True)
        assert result.scores == pytest.approx([reference[s] for s in result.sids], abs=1e-4)
        assert result.sids[0] == max(reference, key=reference.get)


def test_hf_generate_with_the_logits_processor(sid_model):
    model, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids)
    texts = sid_prompts(tok, sids)[:2]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    processor = SidTrieLogitsProcessor(trie, enc.input_ids.shape[1], eos_token_id=tok.eos_token_id)
    out = model.generate(**enc, num_beams=8, num_return_sequences=8, max_new_tokens=4, do_sample=False,
                         length_penalty=0.0, logits_processor=LogitsProcessorList([processor]),
                         return_dict_in_generate=True, output_scores=True)
    generated = tok.batch_decode(out.sequences[:, enc.input_ids.shape[1]:], skip_special_tokens=False)
    assert all(g.startswith(tuple(sids)) for g in generated)  # every beam is a catalog SID (+ EOS)
    ours = constrained_beam_search(model, tok, texts, trie, num_beams=8)
    for b, result in enumerate(ours):
        assert generated[b * 8].startswith(result.sids[0])


def test_processor_raises_on_unknown_prefix(sid_model):
    _, tok, sids = sid_model
    trie = SidTrie.from_tokenizer(tok, sids[:5])
    outside = next(s for s in sids if s not in sids[:5])
    prompt = tok(["<|im_start|>assistant\n"], return_tensors="pt").input_ids
    bad = torch.cat([prompt, tok([outside], return_tensors="pt", add_special_tokens=False).input_ids], dim=1)
    processor = SidTrieLogitsProcessor(trie, prompt.shape[1])
    scores = torch.zeros(1, len(tok))
    with pytest.raises(UnknownPrefixError):
        processor(bad, scores)  # a complete but unknown SID
    with pytest.raises(UnknownPrefixError, match="max_new_tokens"):  # known SID, no EOS configured
        good = torch.cat([prompt, tok([sids[0]], return_tensors="pt", add_special_tokens=False).input_ids], 1)
        processor(good, scores)


def test_checkpoint_without_sid_tokens_is_rejected(sid_model):
    _, tok, _ = sid_model
    with pytest.raises(MissingSidTokensError, match=r"lacks 2 of the 3 SID tokens.*<a_99>"):
        SidTrie.from_tokenizer(tok, ["<a_99><b_98><c_1>"])
