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


def use_eos_for_padding(tokenizer: Any, source: str) -> None:
    """A tokenizer without a pad token pads with its EOS token. Qwen3's has one
    (``<|endoftext|>``), but many causal LMs' (Llama-style base models) have none, and the GRPO
    trainer's and the decoders' left padding need an id. Padding positions are masked out of
    attention and labels (the SFT labels come from the completion masks), so EOS is safe there."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ConfigError(f"backbone {source}: its tokenizer has neither a pad nor an EOS token; a causal LM "
                          "needs an end token to stop generating")
    tokenizer.pad_token = tokenizer.eos_token
    log.info("backbone %s: no pad token; padding with the EOS token %r", source, tokenizer.eos_token)


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


#: Qwen3-1.7B's published architecture: its config.json on the Hugging Face hub (Qwen/Qwen3-1.7B,
#: Apache-2.0), as in tests/fixtures/qwen3_1.7b_config.json, less the token ids and vocabulary
#: size, which come from the tokenizer a backbone is built with.
QWEN3_1_7B = {
    "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 28, "num_attention_heads": 16,
    "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False,
}
#: Architectures a config-built backbone can name instead of a config.json URI.
ARCHITECTURES = {"qwen3-1.7b": QWEN3_1_7B}
#: Config-built backbone settings -> the HF config keys they set.
SHAPE_KEYS = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size", "num_layers": "num_hidden_layers",
              "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
              "max_positions": "max_position_embeddings"}
#: Keys of a published config that name its own tokenizer, not the one a backbone is built with.
_TOKENIZER_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def architecture_config(architecture: str) -> dict[str, Any]:
    """The HF config of ``architecture``: a built-in name (:data:`ARCHITECTURES`) or the URI of a
    model's config.json (local or gs://)."""
    if architecture in ARCHITECTURES:
        return dict(ARCHITECTURES[architecture])
    try:
        config = storage.read_json(architecture)
    except (storage.StorageError, ValueError) as exc:
        raise ConfigError(f"backbone architecture {architecture!r}: neither a built-in one ({sorted(ARCHITECTURES)}) "
                          f"nor a readable config.json ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"backbone architecture {architecture}: not a model config.json (no model_type)")
    return config


def build_config_backbone(out: str | Path, texts: Iterable[str], *, architecture: str = "qwen3-1.7b",
                          vocab_size: int = 2000, seed: int = 0, **shape: int | None) -> Path:
    """Write a randomly initialised model of a published architecture (``architecture``, its
    sizes replaced by the set ``shape`` values: :data:`SHAPE_KEYS`), in the architecture's dtype,
    with a tokenizer trained on ``texts`` (as the tiny backbone's). Everything else (attention
    layout and head size, norms, RoPE, tied embeddings) is the real model's, so GPU kernels, vLLM
    and DeepSpeed see what they will see with the real checkpoint, at a size built in seconds."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer(texts, vocab_size)
    values = {k: v for k, v in architecture_config(architecture).items() if k not in _TOKENIZER_KEYS}
    values.update({SHAPE_KEYS[k]: v for k, v in shape.items() if v is not None})
    values.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    dtype = values.pop("torch_dtype", None) or values.pop("dtype", None) or "float32"
    config = AutoConfig.for_model(**values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    with storage.staged_dir(out) as tmp:
        save_backbone(model, tokenizer, tmp)
    log.info("%s backbone: %s params (%s), vocab %d -> %s", architecture,
             f"{sum(p.numel() for p in model.parameters()):,}", dtype, len(tokenizer), out)
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


def build_from_config(out: str | Path, items_uri: str, corpus_uri: str | None, *, seed: int,
                      **settings: Any) -> Path:
    """A config-built backbone (:func:`build_config_backbone`) whose tokenizer is trained on the
    catalog and corpus text."""
    return build_config_backbone(out, backbone_texts(items_uri, corpus_uri), seed=seed, **settings)


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
    use_eos_for_padding(tokenizer, str(source))
    before = len(tokenizer)
    torch.manual_seed(seed)
    new_ids = add_sid_tokens(model, tokenizer, tokens)
    save_backbone(model, tokenizer, out, tokens)
    log.info("backbone %s: %d SID tokens added (vocabulary %d -> %d)", source, len(new_ids), before, len(tokenizer))
    return len(new_ids), new_ids
