"""The backbone a training run starts from: a saved HF causal LM (local or ``gs://``), or a tiny
one built offline from the run's own text, extended with the catalog's SID tokens.

The tiny backbone is what runs on a CPU with no hub access: a byte-level BPE tokenizer trained
with ``tokenizers`` on the catalog and corpus text, a ChatML chat template, and a small randomly
initialised Qwen3 model.

SID tokens and the think markers are added as *normal* tokens (``special_tokens=False``): they
stay atomic, and survive ``decode(skip_special_tokens=True)``, which TRL applies before reward
functions see a completion (STACK.md section 3, pitfall 3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from components.common import prompts, sid, storage
from components.common.artifacts import SID_VOCAB_FILE
from components.common.config import ConfigError
from components.common.modeling import check_causal_lm, load_causal_lm
from components.common.prompts import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

#: ChatML, the format of Qwen chat models (system/user/assistant turns).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped for transformers, with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.add_tokens([THINK_OPEN, THINK_CLOSE], special_tokens=False)
    return fast


def add_sid_tokens(model: Any, tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Add SID tokens as normal tokens; returns the ids of those that were new.

    Every new row (input embeddings, and the output head when it is not tied to them) starts
    from the mean and covariance of the *trained* rows, as HF's mean-resizing does, wherever the
    id falls. A model's embedding matrix can be larger than its tokenizer (Qwen3-1.7B: 151,936
    rows for 151,669 tokens), and ``add_tokens`` then hands out ids inside that untrained padding,
    which ``resize_token_embeddings(mean_resizing=True)`` leaves as it is: it only initialises rows
    past the old matrix size.
    """
    import torch

    trained = len(tokenizer)  # the rows the tokenizer uses; rows past it are padding
    tokenizer.add_tokens(list(tokens), special_tokens=False)
    new_ids = list(range(trained, len(tokenizer)))
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if not new_ids:
        return new_ids
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            rows = weight[:trained].float()
            mean = rows.mean(0)
            centered = rows - mean
            covariance = centered.T @ centered / trained
            try:
                draw = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * covariance)
                values = draw.sample((len(new_ids),))
            except ValueError:  # covariance not positive definite (tiny or degenerate matrices)
                values = mean.expand(len(new_ids), -1)
            weight[new_ids] = values.to(weight.dtype)
    return new_ids


def save_backbone(model: Any, tokenizer: Any, out: str | Path, sid_tokens: Iterable[str] = ()) -> None:
    """``save_pretrained`` model + tokenizer (+ generation config) + the SID vocabulary file."""
    out = Path(out)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    storage.write_json(storage.join(out, SID_VOCAB_FILE), sorted(set(sid_tokens)))


def build_tiny_backbone(out: str | Path, texts: Iterable[str], *, vocab_size: int = 2000,
                        hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                        num_heads: int = 4, num_kv_heads: int = 2, max_positions: int = 2048,
                        seed: int = 0) -> Path:
    """Write a randomly initialised small Qwen3 model and its tokenizer to ``out`` (a folder)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    tokenizer = train_tokenizer(texts, vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with storage.staged_dir(out) as tmp:
        save_backbone(model, tokenizer, tmp)
    log.info("tiny backbone: %s params, vocab %d -> %s",
             f"{sum(p.numel() for p in model.parameters()):,}", len(tokenizer), out)
    return Path(out)


_ITEM_TEXT = ("title", "description", "brand")


def backbone_texts(items_uri: str, corpus_uri: str | None = None) -> Iterator[str]:
    """Text to train a tiny tokenizer on: item fields, corpus turns and narratives, and the
    recommendation prompts; SID tokens are blanked (they are added as whole tokens later)."""
    items = storage.read_parquet(items_uri)
    for row in items.to_pylist():
        for key in _ITEM_TEXT:
            if row.get(key):
                yield row[key]
        if row.get("categories"):
            yield " ".join(row["categories"])
    if corpus_uri is not None:
        corpus = storage.read_parquet(corpus_uri, columns=["messages", "text"])
        for row in corpus.to_pylist():
            for message in row["messages"] or []:
                yield sid.TOKEN_RE.sub(" ", message["content"] or "")
            if row["text"]:
                yield sid.TOKEN_RE.sub(" ", row["text"])
    yield from (prompts.DIRECT_SYSTEM, prompts.DIRECT_USER, prompts.REASONING_SYSTEM, prompts.REASONING_USER)


def build_tiny(out: str | Path, items_uri: str, corpus_uri: str | None, *, seed: int, **shape: int) -> Path:
    """A tiny Qwen3 backbone whose tokenizer is trained on the catalog and corpus text."""
    return build_tiny_backbone(out, backbone_texts(items_uri, corpus_uri), seed=seed, **shape)


def check_backbone_uri(uri: str, key: str) -> None:
    """Config-time check of a backbone URI: it exists and holds a causal LM."""
    try:
        check_causal_lm(uri)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def extend_with_sids(source: str | Path, out: Path, tokens: Sequence[str], cache_dir: Path,
                     seed: int = 0) -> tuple[int, list[int]]:
    """Load ``source``, add the SID ``tokens`` (normal tokens, mean-resized embeddings drawn
    with ``seed``), save to ``out``; returns (tokens added, ids of the added tokens)."""
    import torch

    model, tokenizer = load_causal_lm(source, cache_dir=cache_dir)
    before = len(tokenizer)
    torch.manual_seed(seed)
    new_ids = add_sid_tokens(model, tokenizer, tokens)
    save_backbone(model, tokenizer, out, tokens)
    log.info("backbone %s: %d SID tokens added (vocabulary %d -> %d)", source, len(new_ids), before, len(tokenizer))
    return len(new_ids), new_ids
