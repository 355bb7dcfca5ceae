"""The offline tiny backbone and the SID vocabulary extension: atomic SID tokens, new rows
initialised from the trained ones wherever their ids fall."""

from __future__ import annotations

import json

import torch

from components.common import artifacts, modeling, prompts, sid
from components.common.training import backbone


def test_tiny_backbone_roundtrip_with_sid_tokens(tmp_path):
    texts = ["Blue gel pen, fine point, 12-pack", "Copy paper, letter size, recycled"] * 20
    out = backbone.build_tiny_backbone(tmp_path / "tiny", texts, vocab_size=400, seed=1)
    model, tok = modeling.load_causal_lm(out)
    tokens = sid.vocabulary([4, 4, 4])
    rows_before = model.get_input_embeddings().weight.detach().clone()
    assert len(backbone.add_sid_tokens(model, tok, tokens)) == 12
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)
    assert torch.equal(emb[: rows_before.shape[0]], rows_before)  # old rows untouched
    backbone.save_backbone(model, tok, tmp_path / "with-sids", tokens)
    model2, tok2 = modeling.load_causal_lm(tmp_path / "with-sids")
    assert artifacts.model_sid_vocabulary(str(tmp_path / "with-sids")) == set(tokens)
    text = f"{prompts.THINK_OPEN}\n\n{prompts.THINK_CLOSE}\n\n<a_1><b_2><c_3>"
    ids = tok2(text).input_ids
    pieces = tok2.convert_ids_to_tokens(ids)
    assert pieces[0] == "<think>" and pieces[-3:] == ["<a_1>", "<b_2>", "<c_3>"]
    assert tok2.decode(ids, skip_special_tokens=True) == text  # SIDs survive TRL's decode
    chat = tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    out_ids = model2.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert out_ids.shape[1] == len(ids) + 3


def test_prompts_render_through_the_chat_template(tmp_path):
    out = backbone.build_tiny_backbone(tmp_path / "tiny", ["some text"] * 10, vocab_size=300)
    _, tok = modeling.load_causal_lm(out)
    text = prompts.render_prompt(tok, prompts.reasoning_messages(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"]))
    assert text.startswith("<|im_start|>system\n" + prompts.REASONING_SYSTEM)
    assert "items <a_1><b_2><c_3>, <a_4><b_5><c_6>. Can you recommend" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert prompts.think_block("\nbecause pens \n") == "<think>\nbecause pens \n</think>\n\n"  # as Qwen3: newlines only


def test_sid_rows_inside_an_oversized_embedding_start_from_the_trained_rows(tmp_path):
    """Qwen3-1.7B's embedding matrix has more rows than its tokenizer has tokens: add_tokens hands
    out ids inside that untrained padding, which HF's mean-resizing would leave as they are."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    tiny = backbone.build_tiny_backbone(tmp_path / "tiny", ["Blue gel pen, fine point"] * 20, vocab_size=300, seed=1)
    _, tok = modeling.load_causal_lm(tiny)
    padded = len(tok) + 64  # room for all 24 SID tokens inside the padding
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(
        vocab_size=padded, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=False))
    with torch.no_grad():  # padding rows far from the trained ones, as an untrained region can be
        model.get_input_embeddings().weight[len(tok):] = 100.0
        model.get_output_embeddings().weight[len(tok):] = 100.0
    trained = len(tok)
    new_ids = backbone.add_sid_tokens(model, tok, sid.vocabulary([8, 8, 8]))
    assert new_ids == list(range(trained, trained + 24))
    assert model.get_input_embeddings().num_embeddings == padded  # no resize was needed
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        mean = weight[:trained].mean(0)
        assert torch.allclose(weight[new_ids], mean.expand(len(new_ids), -1), atol=1e-3)
        assert (weight[trained + 24:] == 100.0).all()  # rows no token uses stay as they were


def test_a_backbone_without_a_pad_token_pads_with_eos(tmp_path):
    """Many causal LMs ship no pad token; the extended backbone pads with EOS (GRPO's and the
    decoders' left padding need an id), and one with neither is refused by name."""
    import pytest

    from components.common.config import ConfigError

    tiny = backbone.build_tiny_backbone(tmp_path / "tiny", ["Blue gel pen, fine point"] * 20, vocab_size=300, seed=1)
    model, tok = modeling.load_causal_lm(tiny)
    tok.pad_token = None
    model.save_pretrained(tmp_path / "no-pad")
    tok.save_pretrained(tmp_path / "no-pad")
    backbone.extend_with_sids(tmp_path / "no-pad", tmp_path / "out", sid.vocabulary([2, 2, 2]), tmp_path / "cache")
    _, extended = modeling.load_causal_lm(tmp_path / "out")
    assert extended.pad_token == extended.eos_token == "<|im_end|>"
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["pad_token_id"] == \
        extended.eos_token_id
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "no-pad")
    with pytest.raises(ConfigError, match="its tokenizer has neither a pad nor an EOS token"):
        backbone.extend_with_sids(tmp_path / "no-pad", tmp_path / "out2", sid.vocabulary([2, 2, 2]),
                                  tmp_path / "cache")
