"""RQ-VAE as in MiniOneRec / LC-Rec (RECIPE.md section 2): an MLP encoder to a ``code_dim``
latent, residual vector quantization with straight-through gradients, and a mirrored MLP
decoder; MSE reconstruction + (codebook loss + beta x commitment loss) averaged over levels.

Codebooks are initialised by k-means on the first batch's latents (level by level on the
residuals). Training evaluates every ``eval_every`` epochs on all items and keeps the checkpoint
with the lowest collision rate, ties broken by reconstruction loss (the recipe keeps the
best-collision checkpoint); it stops after ``patience`` evaluations without improvement.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.common.logs import Progress
from components.sid_quantize.config import RQVAEConfig
from components.sid_quantize.kmeans import kmeans, nearest
from components.sid_quantize.quantizer import Quantizer, rq_encode

log = logging.getLogger(__name__)


def mlp(dims: list[int], dropout: float) -> nn.Sequential:
    """Dropout -> Linear -> ReLU blocks; no activation after the last Linear."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(Quantizer):
    method = "rq_vae"

    def __init__(self, input_dim: int, codebook_sizes: list[int], hidden_dims: list[int], code_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.input_dim, self.hidden_dims, self.code_dim, self.dropout = input_dim, list(hidden_dims), code_dim, dropout
        self.encoder = mlp([input_dim, *hidden_dims, code_dim], dropout)
        self.decoder = mlp([code_dim, *reversed(hidden_dims), input_dim], dropout)
        self.levels = nn.ParameterList([nn.Parameter(torch.zeros(size, code_dim)) for size in codebook_sizes])

    @property
    def codebooks(self) -> list[torch.Tensor]:
        return list(self.levels)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(zq)

    def architecture(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim, "codebook_sizes": self.codebook_sizes, "hidden_dims": self.hidden_dims,
                "code_dim": self.code_dim, "dropout": self.dropout}

    def forward(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and the quantization loss (mean over levels of codebook + beta x
        commitment), with straight-through gradients through the code choice."""
        z = self.encoder(x)
        residual, quantized, losses = z, torch.zeros_like(z), []
        for codebook in self.levels:
            index, _ = nearest(residual.detach(), codebook.detach())
            chosen = codebook[index]
            losses.append(F.mse_loss(chosen, residual.detach()) + beta * F.mse_loss(chosen.detach(), residual))
            straight = residual + (chosen - residual).detach()
            residual = residual - straight
            quantized = quantized + straight
        return self.decoder(quantized), torch.stack(losses).mean()

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, iters: int, generator: torch.Generator) -> None:
        """k-means of each level's residuals over ``x``'s latents."""
        self.eval()
        residual = self.encoder(x)
        for codebook in self.levels:
            codebook.data.copy_(kmeans(residual, codebook.shape[0], iters=iters, generator=generator))
            index, _ = nearest(residual, codebook)
            residual = residual - codebook[index]


def collision_rate(codes: torch.Tensor) -> float:
    """(items - distinct SIDs) / items, the recipe's definition."""
    return (codes.shape[0] - torch.unique(codes, dim=0).shape[0]) / codes.shape[0]


@torch.no_grad()
def evaluate(model: RQVAE, x: torch.Tensor) -> tuple[float, float]:
    """(collision rate of greedy codes, reconstruction MSE) over all of ``x``."""
    z = model.latents(x)
    codes = rq_encode(z, [c.detach() for c in model.levels])
    recon = model.reconstruct(codes)
    return collision_rate(codes), float(F.mse_loss(recon, x))


def train_rq_vae(x: torch.Tensor, codebook_sizes: list[int], cfg: RQVAEConfig,
                 seed: int) -> tuple[RQVAE, dict[str, Any]]:
    """Train an RQ-VAE on embeddings ``x``; returns the best checkpoint and a training summary."""
    n = x.shape[0]
    if n < max(codebook_sizes):
        raise ValueError(f"rq_vae: {n} items for a codebook of {max(codebook_sizes)} codes; k-means "
                         "initialisation needs at least one item per code")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[x.device.index or 0] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)  # parameter init and dropout masks
        model = RQVAE(x.shape[1], codebook_sizes, cfg.hidden_dims, cfg.code_dim, cfg.dropout).to(x.device)
        return _fit(model, x, cfg, generator)


def _fit(model: RQVAE, x: torch.Tensor, cfg: RQVAEConfig, generator: torch.Generator) -> tuple[RQVAE, dict[str, Any]]:
    n = x.shape[0]
    batch = min(cfg.batch_size, n)
    steps_per_epoch = -(-n // batch)
    first = torch.randperm(n, generator=generator)[:batch].to(x.device)
    model.init_codebooks(x[first], cfg.kmeans_init_iters, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then constant (MiniOneRec)
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)

    best: dict[str, Any] = {"collision_rate": float("inf"), "reconstruction_mse": float("inf"), "epoch": -1}
    best_state = copy.deepcopy(model.state_dict())
    evaluations, stale, start = [], 0, time.perf_counter()
    progress = Progress(log, "rq_vae training", total=cfg.epochs, unit="epochs")
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(x.device)
        total = 0.0
        for step in range(steps_per_epoch):
            xb = x[order[step * batch : (step + 1) * batch]]
            recon, quant_loss = model(xb, cfg.beta)
            loss = F.mse_loss(recon, xb) + cfg.quant_loss_weight * quant_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"rq_vae: loss became {float(loss)} at epoch {epoch}; lower rq_vae.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total += loss.item() * xb.shape[0]
        progress.update()
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            continue
        rate, mse = evaluate(model, x)
        evaluations.append({"epoch": epoch, "train_loss": total / n, "collision_rate": rate, "reconstruction_mse": mse})
        if (rate, mse) < (best["collision_rate"], best["reconstruction_mse"]):
            best = {"collision_rate": rate, "reconstruction_mse": mse, "epoch": epoch}
            best_state, stale = copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        log.info("rq_vae epoch %d: loss %.5f, collision rate %.4f, reconstruction MSE %.6f (best: epoch %d)",
                 epoch, total / n, rate, mse, best["epoch"])
        if cfg.patience is not None and stale >= cfg.patience:
            log.info("rq_vae: early stop at epoch %d (%d evaluations without improvement)", epoch, stale)
            break
    progress.close()
    model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs_run": epoch, "best": best, "evaluations": evaluations,
                   "seconds": round(time.perf_counter() - start, 3)}
