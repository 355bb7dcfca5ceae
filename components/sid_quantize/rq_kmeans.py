"""Residual k-means (RQ-KMeans): level l's codebook is a k-means of the residuals left by
levels 0..l-1. No encoder or decoder: the latent is the embedding itself."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from components.sid_quantize.config import CollisionConfig, RQKMeansConfig
from components.sid_quantize.kmeans import kmeans, nearest
from components.sid_quantize.quantizer import Quantizer

log = logging.getLogger(__name__)


class RQKMeans(Quantizer):
    method = "rq_kmeans"

    def __init__(self, input_dim: int, codebook_sizes: list[int]):
        super().__init__()
        self.input_dim = input_dim
        self.levels = nn.ParameterList(
            [nn.Parameter(torch.zeros(size, input_dim), requires_grad=False) for size in codebook_sizes])

    @property
    def codebooks(self) -> list[torch.Tensor]:
        return list(self.levels)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        return zq

    def architecture(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim, "codebook_sizes": self.codebook_sizes}


def train_rq_kmeans(x: torch.Tensor, codebook_sizes: list[int], cfg: RQKMeansConfig, collisions: CollisionConfig,
                    seed: int) -> tuple[RQKMeans, dict[str, Any]]:
    """Fit one k-means per level on the residuals of all previous levels."""
    generator = torch.Generator().manual_seed(seed)
    model = RQKMeans(x.shape[1], codebook_sizes).to(x.device)
    train = x
    if cfg.max_train_points is not None and cfg.max_train_points < x.shape[0]:
        train = x[torch.randperm(x.shape[0], generator=generator)[: cfg.max_train_points].to(x.device)]
    if train.shape[0] < max(codebook_sizes):
        raise ValueError(f"rq_kmeans: {train.shape[0]} training points for a codebook of {max(codebook_sizes)} "
                         "codes; every code needs at least one point")
    residual = train.clone()
    history = []
    for level, size in enumerate(codebook_sizes):
        start = time.perf_counter()
        centroids = kmeans(residual, size, iters=cfg.iters, tol=cfg.tol, generator=generator,
                           balanced=cfg.balanced, sinkhorn_epsilon=collisions.sinkhorn_epsilon,
                           sinkhorn_iters=collisions.sinkhorn_iters)
        model.levels[level].data.copy_(centroids)
        index, dist = nearest(residual, centroids)
        residual -= centroids[index]
        history.append({"level": level, "seconds": round(time.perf_counter() - start, 3),
                        "residual_mse": float(dist.mean()) / x.shape[1]})
        log.info("rq_kmeans: level %d (%d codes) fitted in %.1fs, residual MSE %.6f", level, size,
                 history[-1]["seconds"], history[-1]["residual_mse"])
    return model, {"levels": history, "train_points": int(train.shape[0])}
