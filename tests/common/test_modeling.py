"""The offline tiny backbone and SID vocabulary extension."""

from __future__ import annotations

import torch

from components.common import modeling, sid


def test_tiny_backbone_roundtrip_with_sid_tokens(tmp_path):
    texts = ["Blue gel pen, fine point, 12-pack", "Copy paper, letter size, recycled"] * 20
    out = modeling.build_tiny_backbone(tmp_path / "tiny", texts, vocab_size=400, seed=1)
    model, tok = modeling.load_causal_lm(out)
    tokens = sid.vocabulary([4, 4, 4])
    rows_before = model.get_input_embeddings().weight.detach().clone()
    assert modeling.add_sid_tokens(model, tok, tokens) == 12
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)
    assert torch.equal(emb[: rows_before.shape[0]], rows_before)  # old rows untouched
    modeling.save_backbone(model, tok, tmp_path / "with-sids")
    model2, tok2 = modeling.load_causal_lm(tmp_path / "with-sids")
    assert modeling.sid_vocabulary(tmp_path / "with-sids") == sorted(tokens)
    text = f"{modeling.THINK_OPEN}\n\n{modeling.THINK_CLOSE}\n\n<a_1><b_2><c_3>"
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
    from components.common import prompts

    out = modeling.build_tiny_backbone(tmp_path / "tiny", ["some text"] * 10, vocab_size=300)
    _, tok = modeling.load_causal_lm(out)
    text = prompts.render_prompt(tok, prompts.reasoning_messages(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"]))
    assert text.startswith("<|im_start|>system\n" + prompts.REASONING_SYSTEM)
    assert "items <a_1><b_2><c_3>, <a_4><b_5><c_6>. Can you recommend" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert prompts.think_block("\nbecause pens \n") == "<think>\nbecause pens \n</think>\n\n"  # as Qwen3: newlines only
