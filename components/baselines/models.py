"""Baselines scored on the same rows as the model: popularity and SASRec.

Both rank the full catalog (the non-retired SID map items), like the constrained decoder, and
learn from the train split only.

* Popularity: items ranked by how often they are the target of a train sample (ties by item
  id), the same list for every user.
* SASRec (Kang & McAuley 2018), compact: item + position embeddings, causal self-attention
  blocks, trained with BCE on every position against one random negative item, Adam; the
  paper's settings (hidden 32, dropout 0.3, lr 1e-3) are the config defaults. Early stopping on
  the valid split's NDCG@10 when it has rows.
* SASRec-CE (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than
  SASRec?", RecSys 2023): the same network trained with cross-entropy over the whole item
  vocabulary at every position (a full softmax, no negatives), the stronger classic baseline;
  tuned on valid (:func:`tune_sasrec`): every setting of a small grid is trained with early
  stopping, and the one with the best valid NDCG@10 ranks.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional

from components.baselines.config import SasrecCeConfig, SasrecConfig
from components.common.logs import Progress

log = logging.getLogger(__name__)


@dataclass
class Ranking:
    """Top items per evaluated row (best first) with their scores."""

    items: list[list[str]]
    scores: list[list[float]]
    info: dict = field(default_factory=dict)


def popularity(train: pd.DataFrame, catalog_items: Sequence[str], n_rows: int, top: int) -> Ranking:
    """The most frequent train targets among the catalog, the same list for all ``n_rows``."""
    counts = Counter(train["target"])
    ranked = sorted(catalog_items, key=lambda item: (-counts.get(item, 0), item))[:top]
    scores = [float(counts.get(item, 0)) for item in ranked]
    return Ranking(items=[list(ranked)] * n_rows, scores=[scores] * n_rows,
                   info={"train_targets": int(len(train)), "distinct_train_targets": len(counts)})


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        query = self.attn_norm(x)
        attended, _ = self.attn(query, x, x, attn_mask=causal, need_weights=False)
        x = query + attended  # SASRec's residual on the normalised query
        x = x + self.ffn(self.ffn_norm(x))
        return x * keep


class SASRec(nn.Module):
    """Self-attentive sequential recommender; item 0 is padding."""

    def __init__(self, n_items: int, cfg: SasrecConfig):
        super().__init__()
        self.hidden = cfg.hidden_size
        self.items = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.hidden_size, cfg.num_heads, cfg.dropout)
                                    for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-8)
        for name, param in self.named_parameters():  # Xavier init, as the reference implementation
            if param.dim() > 1:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded item indices -> (B, T, hidden) states."""
        length = seqs.shape[1]
        positions = torch.arange(length, device=seqs.device)
        x = self.items(seqs) * math.sqrt(self.hidden) + self.positions(positions)[None]
        keep = (seqs > 0).unsqueeze(-1).to(x.dtype)
        x = self.dropout(x) * keep
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)
        for block in self.blocks:
            x = block(x, causal, keep)
        return self.norm(x)

    def last_scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 = padding) after the last position."""
        return self(seqs)[:, -1] @ self.items.weight.T


def _left_pad(sequences: Sequence[Sequence[int]], length: int) -> np.ndarray:
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for r, seq in enumerate(sequences):
        seq = list(seq)[-length:]
        if seq:
            out[r, length - len(seq):] = seq
    return out


Loss = Literal["bce", "ce"]


class SasrecBaseline:
    """Train SASRec on the train split, then rank the catalog for evaluation rows.

    ``loss``: ``bce`` (MiniOneRec's: each position's next item against one random negative) or
    ``ce`` (cross-entropy over every item of the vocabulary at each position)."""

    def __init__(self, cfg: SasrecConfig, seed: int, loss: Loss = "bce"):
        self.cfg, self.seed, self.loss = cfg, seed, loss

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, catalog_items: Sequence[str]) -> dict:
        """Train on ``train`` (early stopping on ``valid``); returns training facts for the stats."""
        threads = torch.get_num_threads()
        # the steps are tiny (hidden 32, length 10): intra-op threads cost more than they gain,
        # and on a shared machine they thrash
        torch.set_num_threads(1)
        try:
            return self._fit(train, valid, catalog_items)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, train: pd.DataFrame, valid: pd.DataFrame, catalog_items: Sequence[str]) -> dict:
        cfg = self.cfg
        vocab = sorted(set(catalog_items) | set(train["target"]) | {i for h in train["history"] for i in h})
        self.index = {item: i + 1 for i, item in enumerate(vocab)}
        self.vocab = vocab
        catalog_index = torch.tensor(sorted(self.index[i] for i in catalog_items))
        self.catalog_mask = torch.zeros(len(vocab) + 1, dtype=torch.bool)
        self.catalog_mask[catalog_index] = True
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        full = [[self.index[i] for i in h] + [self.index[t]] for h, t in zip(train["history"], train["target"])]
        full = [seq[-(cfg.max_len + 1):] for seq in full]
        inputs = torch.from_numpy(_left_pad([s[:-1] for s in full], cfg.max_len))
        targets = torch.from_numpy(_left_pad([s[1:] for s in full], cfg.max_len))
        self.model = SASRec(len(vocab), cfg)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98))
        valid = valid.head(cfg.max_valid_rows)
        best, best_state, best_epoch, stale, epoch, loss_value = -1.0, None, 0, 0, 0, float("nan")
        name = "SASRec" if self.loss == "bce" else "SASRec-CE"
        progress = Progress(log, f"{name} training", total=cfg.epochs, unit="epochs", every=30.0)
        for epoch in range(1, cfg.epochs + 1):
            self.model.train()
            order = torch.from_numpy(rng.permutation(len(inputs)))
            total, count = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start:start + cfg.batch_size]
                seq, pos = inputs[batch], targets[batch]
                real = pos > 0
                states = self.model(seq)
                loss = (self._ce_loss if self.loss == "ce" else self._bce_loss)(states, pos, real, rng)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * int(real.sum()), count + int(real.sum())
            loss_value = total / max(count, 1)
            progress.update()
            if valid.empty:
                continue
            ndcg = self._valid_ndcg(valid)
            if ndcg > best:
                best, best_state, best_epoch, stale = ndcg, copy.deepcopy(self.model.state_dict()), epoch, 0
            else:
                stale += 1
                if cfg.patience and stale >= cfg.patience:
                    break
        progress.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        info = {"epochs_run": epoch, "best_epoch": best_epoch or epoch, "final_train_loss": loss_value,
                "best_valid_ndcg_at_10": best if best >= 0 else None, "train_sequences": int(len(inputs)),
                "items": len(vocab)}
        log.info("%s: %s", name, info)
        return info

    def _bce_loss(self, states: torch.Tensor, pos: torch.Tensor, real: torch.Tensor,
                  rng: np.random.Generator) -> torch.Tensor:
        """Mean over real positions of BCE(next item) + BCE(one random negative, never the positive)."""
        n_items = len(self.vocab)
        neg = torch.from_numpy(rng.integers(1, n_items + 1, size=tuple(pos.shape)))
        neg = torch.where(neg == pos, neg % n_items + 1, neg)
        pos_logits = (states * self.model.items(pos)).sum(-1)[real]
        neg_logits = (states * self.model.items(neg)).sum(-1)[real]
        loss = (functional.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits), reduction="sum")
                + functional.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits),
                                                              reduction="sum"))
        return loss / real.sum().clamp(min=1)

    def _ce_loss(self, states: torch.Tensor, pos: torch.Tensor, real: torch.Tensor,
                 rng: np.random.Generator) -> torch.Tensor:
        """Mean over real positions of the cross-entropy of the next item against every item
        (scores: the state's dot product with each item embedding, as at ranking time)."""
        logits = states[real] @ self.model.items.weight[1:].T  # column 0 is padding
        return functional.cross_entropy(logits, pos[real] - 1)

    def _encode(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        return torch.from_numpy(_left_pad([[self.index[i] for i in h if i in self.index] for h in histories],
                                          self.cfg.max_len))

    @torch.no_grad()
    def _valid_ndcg(self, valid: pd.DataFrame) -> float:
        self.model.eval()
        ranking = self.rank(valid["history"].tolist(), 10)
        gains = [1.0 / math.log2(items.index(t) + 2) if t in items else 0.0
                 for items, t in zip(ranking.items, valid["target"])]
        return float(np.mean(gains))

    @torch.no_grad()
    def rank(self, histories: Sequence[Sequence[str]], top: int, batch_size: int = 512) -> Ranking:
        """Top ``top`` catalog items after each history."""
        items, scores = [], []
        for start in range(0, len(histories), batch_size):
            logits = self.model.last_scores(self._encode(histories[start:start + batch_size]))
            logits[:, ~self.catalog_mask] = float("-inf")
            values, index = logits.topk(min(top, int(self.catalog_mask.sum())), dim=-1)
            items.extend([[self.vocab[i - 1] for i in row] for row in index.tolist()])
            scores.extend(values.tolist())
        return Ranking(items=items, scores=scores)


def tune_sasrec(cfg: SasrecCeConfig, train: pd.DataFrame, valid: pd.DataFrame, catalog_items: Sequence[str],
                seed: int) -> tuple[SasrecBaseline, dict]:
    """SASRec-CE tuned on valid: every grid setting trained (early stopping on valid NDCG@10),
    the best valid NDCG@10 kept (ties: the earlier setting). Without valid rows nothing can be
    chosen, and the grid's first setting is trained. Returns the chosen model and what tuning
    did: every setting with its valid NDCG@10, epochs and time, and the chosen one."""
    settings = cfg.settings()
    if valid.empty:
        log.warning("SASRec-CE: no valid rows to tune on; training the grid's first setting only")
        settings = settings[:1]
    tried, best, best_score = [], None, -1.0
    for index, setting in enumerate(settings, 1):
        chosen = {name: getattr(setting, name) for name in ("hidden_size", "dropout", "learning_rate")}
        log.info("SASRec-CE: setting %d/%d %s", index, len(settings), chosen)
        began = time.perf_counter()
        baseline = SasrecBaseline(setting, seed, loss="ce")
        info = baseline.fit(train, valid, catalog_items)
        score = info["best_valid_ndcg_at_10"]
        tried.append({**chosen, "valid_ndcg_at_10": score, "epochs_run": info["epochs_run"],
                      "best_epoch": info["best_epoch"], "seconds": round(time.perf_counter() - began, 3)})
        if best is None or (score is not None and score > best_score):
            best, best_score, best_info, best_setting = baseline, score if score is not None else -1.0, info, chosen
    info = {**best_info, "chosen": best_setting, "selected_by": "valid NDCG@10" if not valid.empty else
            "no valid rows: the grid's first setting", "grid": tried}
    log.info("SASRec-CE: chose %s (valid NDCG@10 %s) of %d setting(s)", best_setting,
             None if best_score < 0 else round(best_score, 4), len(tried))
    return best, info
