"""A tiny random causal LM that knows a SID vocabulary, and an exhaustive scorer to check
constrained decoding against (shared by the constrained-decoding and evaluation tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from components.common import modeling, sid
from components.common.training import backbone

TEXTS = ["Blue gel pen, fine point, 12-pack", "Copy paper, letter size, recycled",
         "Ring binder with clear view cover", "Desk organizer in bamboo"] * 10


def build_sid_model(out: Path, codebook_sizes: Sequence[int], seed: int = 0, **shape: Any) -> Path:
    """Save a tiny Qwen3 with every SID token of ``codebook_sizes`` added (``save_pretrained``
    folder with ``sid_vocab.json``; ``shape``: sizes for ``build_tiny_backbone``). The SID
    embeddings are re-drawn at random: mean-resizing makes all new tokens nearly equiprobable,
    which would leave nothing to rank."""
    base = backbone.build_tiny_backbone(Path(out).with_name(Path(out).name + "-base"), TEXTS,
                                        vocab_size=300, seed=seed, **shape)
    model, tok = modeling.load_causal_lm(base)
    tokens = sid.vocabulary(codebook_sizes)
    backbone.add_sid_tokens(model, tok, tokens)
    ids = tok.convert_tokens_to_ids(tokens)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ids] = torch.randn(len(ids), emb.shape[1], generator=generator) * 0.5
    backbone.save_backbone(model, tok, out, tokens)
    return Path(out)


@torch.inference_mode()
def exhaustive_scores(model, tokenizer, prompt: str, sids: Sequence[str]) -> dict[str, float]:
    """log p(SID | prompt) of every SID by teacher forcing (the brute-force reference)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    sid_ids = [tokenizer(s, add_special_tokens=False).input_ids for s in sids]
    batch = torch.tensor([prompt_ids + ids for ids in sid_ids])
    logprobs = torch.log_softmax(model(batch).logits.float(), dim=-1)
    n = len(prompt_ids)
    scores = {}
    for row, (s, ids) in enumerate(zip(sids, sid_ids)):
        scores[s] = float(sum(logprobs[row, n - 1 + i, t] for i, t in enumerate(ids)))
    return scores
