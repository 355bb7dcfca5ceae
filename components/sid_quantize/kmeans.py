"""Seeded k-means in torch (CPU or GPU), optionally with balanced (Sinkhorn) assignment.

Shared by both quantizers: RQ-KMeans fits one k-means per level; the RQ-VAE initialises its
codebooks with k-means.

Determinism: every random choice draws from an explicit ``torch.Generator``; cluster sums use
``index_add_`` on CPU (sequential, so deterministic) and a one-hot matmul on GPU (where
``index_add_`` accumulates atomically in arbitrary order).
"""

from __future__ import annotations

import logging

import torch

from components.sid_quantize.sinkhorn import balanced_assign

log = logging.getLogger(__name__)

#: Rows per block when computing distances, bounding memory to about CHUNK x k floats.
CHUNK = 8192


def sq_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, k), clamped at 0 against rounding."""
    c_sq = (centroids * centroids).sum(1)
    return torch.addmm(c_sq[None, :], x, centroids.T, alpha=-2.0).add_((x * x).sum(1)[:, None]).clamp_min_(0.0)


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid of every row, and the squared distance to it."""
    index = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    c_sq = (centroids * centroids).sum(1)
    for start in range(0, x.shape[0], CHUNK):
        block = x[start : start + CHUNK]
        # argmin ||x-c||^2 = argmin (||c||^2 - 2 x.c): one fused matmul; ||x||^2 is added back
        # to the minimum only
        value, idx = torch.addmm(c_sq[None, :], block, centroids.T, alpha=-2.0).min(1)
        index[start : start + CHUNK] = idx
        dist[start : start + CHUNK] = (value + (block * block).sum(1)).clamp_min(0.0)
    return index, dist


def cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums of rows and counts (deterministic on CPU and GPU)."""
    counts = torch.bincount(assign, minlength=k).to(x.dtype)
    if x.device.type == "cpu":
        sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, x)
    else:
        sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
        for start in range(0, x.shape[0], CHUNK):
            block = assign[start : start + CHUNK]
            onehot = torch.nn.functional.one_hot(block, k).to(x.dtype)
            sums += onehot.T @ x[start : start + CHUNK]
    return sums, counts


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding. Duplicate points are handled: once every point coincides with a
    chosen centre, the remaining centres are drawn uniformly (and stay duplicates)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centroids = [x[first]]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0.0:
            probs = (closest / total).double().cpu()
            choice = int(torch.multinomial(probs, 1, generator=generator))
        else:
            choice = int(torch.randint(n, (1,), generator=generator, device="cpu"))
        centroids.append(x[choice])
        closest = torch.minimum(closest, ((x - x[choice]) ** 2).sum(1))
    return torch.stack(centroids)


def kmeans(x: torch.Tensor, k: int, *, iters: int, generator: torch.Generator, tol: float = 1e-4,
           balanced: bool = False, sinkhorn_epsilon: float = 0.003, sinkhorn_iters: int = 50,
           seed_points: int | None = None) -> torch.Tensor:
    """Fit ``k`` centroids to the rows of ``x`` (Lloyd's algorithm, k-means++ seeding).

    ``seed_points`` bounds the sample the k-means++ seeding runs on (default 64 per centroid),
    keeping seeding cheap on large inputs. Empty clusters are re-seeded with the points farthest
    from their centroids. ``balanced`` replaces nearest-centroid assignment with a Sinkhorn
    transport onto equal-size clusters.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least as many points as clusters ({n} points, {k} clusters)")
    sample_size = min(n, seed_points or 64 * k)
    sample = x if sample_size == n else x[torch.randperm(n, generator=generator)[:sample_size].to(x.device)]
    centroids = kmeans_plus_plus(sample, k, generator)
    previous: torch.Tensor | None = None
    for it in range(iters):
        if balanced:
            assign = balanced_assign(sq_distances(x, centroids), sinkhorn_epsilon, sinkhorn_iters)
            dist = ((x - centroids[assign]) ** 2).sum(1)
        else:
            assign, dist = nearest(x, centroids)
        sums, counts = cluster_sums(x, assign, k)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None], centroids)
        reseeded = 0
        if not bool(filled.all()):
            # Re-seed empty clusters at the worst-represented points (deterministic: by distance,
            # ties by index). Points at distance 0 cannot help (all-identical data stays collapsed).
            order = torch.argsort(dist, descending=True, stable=True)[: int((~filled).sum())]
            useful = dist[order] > 0
            reseeded = int(useful.sum())
            centroids[torch.nonzero(~filled).flatten()[useful]] = x[order[useful]]
        changed = 1.0 if previous is None else float((assign != previous).float().mean())
        previous = assign
        if changed <= tol and not reseeded:
            log.debug("k-means (k=%d) converged after %d iterations", k, it + 1)
            break
    return centroids
