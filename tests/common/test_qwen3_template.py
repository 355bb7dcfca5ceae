"""What every stage trains on and asks the model to continue is exactly what Qwen3's own chat
template renders, with thinking off (direct rows, direct evaluation) and on (reasoning rows, GRPO,
thinking evaluation), including how it renders earlier assistant turns.

The tiny tokenizer (:func:`components.common.training.backbone.train_tokenizer`) is used twice: with its
ChatML template, and with Qwen3's published template (tests/fixtures/qwen3_chat_template.jinja).
A training sequence is compared with Qwen3's rendering of the whole conversation up to and
including the answer's end-of-turn token (the newline the template writes after it separates
turns; generation stops at the end-of-turn token, so no stage trains on it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import trl

from components.common import prompts, sid
from components.common.artifacts import CorpusRow, ReasoningRow
from components.common.decoding import split_reasoning
from components.common.training import backbone, sft
from components.grpo.beam import BeamRollout
from components.grpo.stage import prompt_rows

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3_chat_template.jinja"
CODEBOOKS = (4, 5, 6)
HISTORY = ["<a_1><b_2><c_3>", "<a_0><b_4><c_5>"]
TARGET = "<a_3><b_0><c_1>"
END = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizers():
    """(ChatML tokenizer, the same tokenizer with Qwen3's template), both knowing the SID tokens."""
    texts = [prompts.DIRECT_SYSTEM, prompts.DIRECT_USER, prompts.REASONING_SYSTEM, prompts.REASONING_USER,
             "The user likes pens and paper, because pens are blue."] * 5
    chatml = backbone.train_tokenizer(texts, vocab_size=400)
    chatml.add_tokens(sid.vocabulary(CODEBOOKS), special_tokens=False)
    qwen3 = copy.deepcopy(chatml)
    qwen3.chat_template = FIXTURE.read_text()
    return chatml, qwen3


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def turn(messages, answer=None, **assistant):
    return [*messages, {"role": "assistant", "content": answer, **assistant}]


def check_row(tokenizer, ids, mask, prompt_text, conversation_text, supervise_end):
    """``ids`` = the prompt's own tokens + the completion, decoding to the conversation up to its
    end-of-turn token; only the completion (and the end token when asked) is supervised."""
    assert conversation_text.endswith(END + "\n")
    assert tokenizer.decode(ids) == conversation_text[:-1]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids  # tokenized alone, as the model is asked at inference
    assert mask == [0] * n + [1] * (len(ids) - n - 1) + [int(supervise_end)]
    assert tokenizer.decode(ids[n:]) == conversation_text[len(prompt_text):-1]


def test_the_fixture_is_qwen3s_published_template(tokenizers):
    header, body = FIXTURE.read_text().split("-#}\n", 1)
    assert "Apache License 2.0" in header and "Qwen/Qwen3-1.7B" in header
    assert body == (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    _, qwen3 = tokenizers
    conversation = turn(prompts.direct_messages(HISTORY), TARGET)
    with_header = render(qwen3, conversation)
    qwen3.chat_template = body
    try:
        assert render(qwen3, conversation) == with_header  # the header comment renders nothing
    finally:
        qwen3.chat_template = FIXTURE.read_text()
    assert with_header.endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\n{TARGET}{END}\n")


# ----------------------------------------------------------------------------------------------
# What evaluation and GRPO ask the model to continue
# ----------------------------------------------------------------------------------------------


def test_prompts_are_qwen3s_generation_prompts(tokenizers):
    _, qwen3 = tokenizers
    direct, reasoning = prompts.direct_messages(HISTORY), prompts.reasoning_messages(HISTORY)
    # thinking off: Qwen3 writes the empty think block itself
    assert prompts.render_prompt(qwen3, direct) + prompts.EMPTY_THINK == render(
        qwen3, direct, add_generation_prompt=True, enable_thinking=False)
    # thinking on (Qwen3's default): the model opens the think block
    thinking = render(qwen3, reasoning, add_generation_prompt=True, enable_thinking=True)
    assert prompts.render_prompt(qwen3, reasoning) == thinking == render(qwen3, reasoning, add_generation_prompt=True)
    assert thinking.endswith("<|im_start|>assistant\n")
    columns, _ = prompt_rows(qwen3, [ReasoningRow(HISTORY, "r", TARGET)], 4096, None, 0)
    assert columns["prompt"] == [thinking]  # GRPO's prompts


@pytest.mark.parametrize("reasoning", ["because pens", " because pens \n", "\n\nline one\nline two\n",
                                       "the user likes <a_1><b_2><c_3>"])
def test_the_sid_position_is_qwen3s(tokenizers, reasoning):
    """Thinking evaluation rebuilds the prefix from the generated reasoning; direct evaluation
    continues the empty think block: both end exactly where Qwen3 renders the SID."""
    _, qwen3 = tokenizers
    reasoning_messages = prompts.reasoning_messages(HISTORY)
    for conversation in (turn(reasoning_messages, TARGET, reasoning_content=reasoning),
                         turn(reasoning_messages, f"<think>\n{reasoning}\n</think>\n\n{TARGET}")):
        full = render(qwen3, conversation)
        generated = full[len(prompts.render_prompt(qwen3, reasoning_messages)):].split(TARGET)[0]
        parsed, closed = split_reasoning(generated)
        assert closed
        prefix = prompts.render_prompt(qwen3, reasoning_messages) + prompts.think_block(parsed)
        assert full == prefix + TARGET + END + "\n"
    direct = prompts.direct_messages(HISTORY)
    assert render(qwen3, turn(direct, TARGET)) == (prompts.render_prompt(qwen3, direct) + prompts.EMPTY_THINK
                                                   + TARGET + END + "\n")


# ----------------------------------------------------------------------------------------------
# What the stages train on
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("supervise_end", [False, True])
def test_direct_and_chat_rows_are_qwen3s_non_thinking_turns(tokenizers, supervise_end):
    _, qwen3 = tokenizers
    direct = prompts.direct_messages(HISTORY)
    enc = sft.encode_direct(qwen3, [(HISTORY, TARGET)], supervise_end, max_length=4096)
    check_row(qwen3, enc.input_ids[0], enc.completion_mask[0],
              render(qwen3, direct, add_generation_prompt=True, enable_thinking=False),
              render(qwen3, turn(direct, TARGET)), supervise_end)
    chats = [
        [{"role": "system", "content": "You know office products."},
         {"role": "user", "content": f"Which item is {TARGET}?"}, {"role": "assistant", "content": "Blue pens"}],
        # earlier assistant turns: Qwen3 drops their reasoning and writes no think block for them
        [{"role": "user", "content": "Which pens?"},
         {"role": "assistant", "content": "<think>\nthe user asked\n</think>\n\nBlue ones"},
         {"role": "user", "content": f"And the SID of {TARGET}'s neighbour?"},
         {"role": "assistant", "content": "<a_1><b_2><c_3>"}],
        [{"role": "user", "content": "Name it."}, {"role": "assistant", "content": "\nBlue pens"}],
    ]
    rows = [CorpusRow("chat", "response", m, None) for m in chats]
    enc = sft.encode_corpus(qwen3, rows, supervise_end, max_length=4096)
    for messages, ids, mask in zip(chats, enc.input_ids, enc.completion_mask):
        conversation = render(qwen3, messages)
        check_row(qwen3, ids, mask, render(qwen3, messages[:-1], add_generation_prompt=True, enable_thinking=False),
                  conversation, supervise_end)
    assert "the user asked" not in qwen3.decode(enc.input_ids[1])


@pytest.mark.parametrize("reasoning", ["because pens", " because pens \n", "\nfirst\n\nsecond\n"])
def test_reasoning_rows_are_qwen3s_thinking_turns(tokenizers, reasoning):
    _, qwen3 = tokenizers
    messages = prompts.reasoning_messages(HISTORY)
    enc = sft.encode_reasoning(qwen3, [ReasoningRow(HISTORY, reasoning, TARGET)], "reasoning", 4096)
    conversation = render(qwen3, turn(messages, TARGET, reasoning_content=reasoning))
    assert conversation == render(qwen3, turn(messages, f"<think>\n{reasoning}\n</think>\n\n{TARGET}"))
    check_row(qwen3, enc.input_ids[0], enc.completion_mask[0],
              render(qwen3, messages, add_generation_prompt=True, enable_thinking=True), conversation, True)


@pytest.mark.parametrize("closed", [True, False])
def test_grpo_beam_completions_are_qwen3s_thinking_turns(tokenizers, closed):
    """A beam rollout = sampled reasoning, the closing the rollout adds, the beam's SID and EOS:
    Qwen3's rendering of that reasoning and SID, whether the model closed the block or not."""
    _, qwen3 = tokenizers
    catalog = [TARGET, *HISTORY]
    rollout = BeamRollout(qwen3, catalog, beam_width=1, max_completion_length=64)
    sampled = qwen3("<think>\nblue pens" + ("\n</think>" if closed else ""), add_special_tokens=False).input_ids
    reasoning = rollout.close(sampled, [qwen3.eos_token_id])
    prompt = prompt_rows(qwen3, [ReasoningRow(HISTORY, "r", TARGET)], 4096, None, 0)[0]["prompt"][0]
    completion = (reasoning.token_ids + reasoning.closing_ids + qwen3(TARGET, add_special_tokens=False).input_ids
                  + [qwen3.eos_token_id])
    conversation = render(qwen3, turn(prompts.reasoning_messages(HISTORY), TARGET, reasoning_content="blue pens"))
    assert prompt + qwen3.decode(completion) == conversation[:-1]
    assert reasoning.closed is closed


def test_narrative_rows_use_no_template(tokenizers):
    """Full-loss rows are plain text + the end token, whichever template the tokenizer has."""
    chatml, qwen3 = tokenizers
    text = f"{TARGET} is a pack of blue pens."
    row = [CorpusRow("item_narrative", "full", [], text)]
    encoded = [sft.encode_corpus(tok, row, supervise_end=True, max_length=4096) for tok in (chatml, qwen3)]
    assert encoded[0].input_ids == encoded[1].input_ids
    assert qwen3.decode(encoded[1].input_ids[0]) == text + END
    assert encoded[1].completion_mask[0] == [1] * len(encoded[1].input_ids[0])


@pytest.mark.parametrize("which", ["chatml", "qwen3"])
def test_each_template_asks_what_it_trained_on(tokenizers, which):
    """Whatever the template, the evaluation prefixes are the training sequences up to the SID."""
    tok = dict(zip(("chatml", "qwen3"), tokenizers))[which]
    direct = sft.encode_direct(tok, [(HISTORY, TARGET)], False, 4096).input_ids[0]
    asked = prompts.render_prompt(tok, prompts.direct_messages(HISTORY)) + prompts.EMPTY_THINK
    assert tok.decode(direct) == asked + TARGET + END
    reasoning = sft.encode_reasoning(tok, [ReasoningRow(HISTORY, " because pens ", TARGET)], "r", 4096)
    generated = tok.decode(reasoning.input_ids[0])[len(prompts.render_prompt(tok, prompts.reasoning_messages(HISTORY))):]
    parsed, _ = split_reasoning(generated.split(TARGET)[0])
    asked = prompts.render_prompt(tok, prompts.reasoning_messages(HISTORY)) + prompts.think_block(parsed)
    assert tok.decode(reasoning.input_ids[0]) == asked + TARGET + END
