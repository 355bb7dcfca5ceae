"""The recommendation prompts shared by training, RL and evaluation (RECIPE.md sections 3-6).

Two prompts ask for the next item of a SID history:

* the *direct* one (alignment task "SID history -> SID"), answered with an empty think block
  then the SID (Qwen3 renders a non-thinking assistant turn as ``<think>\\n\\n</think>\\n\\n``);
* the *reasoning* one (reasoning activation, GRPO and thinking-mode evaluation), answered with
  ``<think>\\n{reasoning}\\n</think>\\n\\n`` then the SID.

Training targets and evaluation prefixes are built here, once, so that what a model is trained
to continue is exactly what it is asked to continue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The think markers, added to every tokenizer as normal tokens (atomic, kept by decode).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_INSTRUCTION = ("Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request. ")

DIRECT_SYSTEM = _INSTRUCTION + "Can you predict the next possible item that the user may expect?"
DIRECT_USER = ("The user has interacted with items {history} in chronological order. "
               "Can you predict the next possible item that the user may expect?")

REASONING_SYSTEM = _INSTRUCTION + "Can you recommend the next item for the user based on their interaction history?"
REASONING_USER = ("The user has sequentially interacted with items {history}. Can you recommend the next "
                  "item for him? Let's think step by step before making recommendation. Directly output "
                  "the item SID after thinking.")

#: What a non-thinking answer starts with (then the SID).
EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"


def think_block(reasoning: str) -> str:
    """``<think>\\n{reasoning}\\n</think>\\n\\n``: a thinking answer up to the SID, as Qwen3's chat
    template renders an assistant turn's reasoning (newlines around it dropped, nothing else)."""
    body = reasoning.strip("\n")
    return f"{THINK_OPEN}\n{body}\n{THINK_CLOSE}\n\n"


def _history(sids: Sequence[str]) -> str:
    return ", ".join(sids)


def direct_messages(history_sids: Sequence[str]) -> list[dict[str, str]]:
    """System + user turns of the direct next-SID prompt."""
    return [{"role": "system", "content": DIRECT_SYSTEM},
            {"role": "user", "content": DIRECT_USER.format(history=_history(history_sids))}]


def reasoning_messages(history_sids: Sequence[str]) -> list[dict[str, str]]:
    """System + user turns of the reasoning prompt (Stage 2a, GRPO, thinking-mode evaluation)."""
    return [{"role": "system", "content": REASONING_SYSTEM},
            {"role": "user", "content": REASONING_USER.format(history=_history(history_sids))}]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat-templated prompt text ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
