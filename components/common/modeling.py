"""Causal-LM backbones: loading by URI, SID vocabulary extension, and an offline tiny backbone.

The tiny backbone is what runs on a CPU with no hub access: a byte-level BPE tokenizer trained
with ``tokenizers`` on the run's own text, a ChatML chat template, and a small randomly
initialised Qwen3 model. Production loads Qwen3-1.7B (or any HF causal LM) from a local path or
a ``gs://`` folder instead; the code after loading is the same.

SID tokens and the think markers are added as *normal* tokens (``special_tokens=False``):
they stay atomic, and survive ``decode(skip_special_tokens=True)``, which TRL applies before
reward functions see a completion (STACK.md section 3, pitfall 3).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from components.common import storage

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
SID_VOCAB_FILE = "sid_vocab.json"

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


def add_sid_tokens(model: Any, tokenizer: Any, tokens: Sequence[str]) -> int:
    """Add SID tokens as normal tokens and resize the embeddings (HF mean-resizing init).

    Returns how many tokens were new. Also records the SID vocabulary on the tokenizer's
    ``init_kwargs`` so :func:`save_backbone` writes it next to the model.
    """
    added = tokenizer.add_tokens(list(tokens), special_tokens=False)
    if added or model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    tokenizer.init_kwargs["sid_vocabulary"] = sorted(
        set(tokenizer.init_kwargs.get("sid_vocabulary", [])) | set(tokens))
    return added


def save_backbone(model: Any, tokenizer: Any, out: str | Path) -> None:
    """``save_pretrained`` model + tokenizer (+ generation config) + the SID vocabulary file."""
    out = Path(out)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    vocab = tokenizer.init_kwargs.get("sid_vocabulary", [])
    (out / SID_VOCAB_FILE).write_text(json.dumps(vocab))


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


def local_model_dir(uri: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local ``save_pretrained`` folder for ``uri``: the path itself, or for ``gs://`` a copy
    downloaded once into ``cache_dir`` keyed by the folder's digest."""
    uri = str(uri)
    if storage.is_gcs(uri):
        cache = Path(cache_dir or Path.home() / ".cache" / "sidreasoner" / "models")
        local = cache / storage.digest(uri).split(":", 1)[1][:16]
        if not local.exists():
            with storage.staged_dir(local) as tmp:
                storage.download_dir(uri, tmp)
        uri = str(local)
    path = Path(uri)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{uri}: not a save_pretrained model folder (no config.json)")
    return path


def load_causal_lm(uri: str | Path, cache_dir: str | Path | None = None, **model_kwargs: Any):
    """(model, tokenizer) from a ``save_pretrained`` folder, local or ``gs://`` (downloaded once
    into ``cache_dir`` keyed by the folder's digest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = local_model_dir(uri, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    return model, tokenizer


def check_causal_lm(uri: str | Path) -> str:
    """Fail early, without loading weights, unless ``uri`` is a complete ``save_pretrained``
    folder (local or ``gs://``) of a model type transformers can load as a causal LM.

    Returns the model type. Raises FileNotFoundError / ValueError naming the URI.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    uri = str(uri)
    config_uri = storage.join(uri, "config.json")
    if storage.is_gcs(uri):
        if not storage.exists(storage.join(uri, storage.MANIFEST)):
            raise FileNotFoundError(f"{uri}: no complete model folder there (no {storage.MANIFEST}; upload it "
                                    "with the storage helpers, or check the URI)")
    elif not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: model folder does not exist")
    try:
        config = storage.read_json(config_uri)
    except storage.StorageError:
        raise FileNotFoundError(f"{uri}: not a save_pretrained model folder (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_uri}: not valid JSON ({exc})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{uri}: model_type {model_type!r} is not a causal language model "
                         "(AutoModelForCausalLM cannot load it)")
    return model_type


def write_sid_vocabulary(model_dir: str | Path, tokens: Iterable[str]) -> None:
    """Write the SID vocabulary file of a saved model folder."""
    (Path(model_dir) / SID_VOCAB_FILE).write_text(json.dumps(sorted(set(tokens))))


def sid_vocabulary(model_dir: str | Path) -> list[str]:
    """The SID tokens a saved backbone was trained with."""
    path = Path(model_dir) / SID_VOCAB_FILE
    return json.loads(path.read_text()) if path.is_file() else []
