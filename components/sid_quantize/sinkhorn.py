"""Entropic optimal transport (Sinkhorn) for balanced and capacity-constrained assignment.

Costs are rescaled to [-1, 1] first (as MiniOneRec / LC-Rec do, so epsilon does not depend on
the distance scale), then log-domain Sinkhorn runs on the dual potentials ``f`` (rows) and
``g`` (columns): the plan is ``exp((f_i + g_j - C_ij) / eps)`` and row i's assignment is
``argmax_j (g_j - C_ij)``. Epsilon is annealed geometrically from 1 down to the target over the
iterations: at a fixed small epsilon (the recipe's 0.003) Sinkhorn needs thousands of iterations
to move mass between columns whose costs differ by more than epsilon, and its argmax is then
close to the plain nearest column; annealed, 50 iterations give near-optimal assignments.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


def annealing(epsilon: float, iters: int) -> Iterator[float]:
    """``iters`` values from 1 down to ``epsilon`` (geometric)."""
    for t in range(iters):
        yield epsilon ** (t / max(iters - 1, 1))


def _rescale(cost: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``cost`` mapped to [-1, 1] over its valid entries (per batch element); invalid -> inf."""
    inf = torch.tensor(float("inf"), dtype=cost.dtype, device=cost.device)
    low = torch.where(valid, cost, inf).amin(dim=dims, keepdim=True)
    high = torch.where(valid, cost, -inf).amax(dim=dims, keepdim=True)
    return torch.where(valid, (cost - (high + low) / 2) / ((high - low) / 2).clamp_min(1e-12), inf)


def balanced_assign(cost: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Assign each row of ``cost`` (m, k) to a column with equal column masses: rows carry 1/m,
    columns receive 1/k each (balanced clusters)."""
    m, k = cost.shape
    scaled = _rescale(cost, torch.ones_like(cost, dtype=torch.bool), (0, 1))
    log_row, log_col = -math.log(m), -math.log(k)
    f = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(k, dtype=cost.dtype, device=cost.device)
    for eps in annealing(epsilon, iters):
        f = eps * (log_row - torch.logsumexp((g[None, :] - scaled) / eps, dim=1))
        g = eps * (log_col - torch.logsumexp((f[:, None] - scaled) / eps, dim=0))
    return (g[None, :] - scaled).argmax(1)


def capacity_assign(cost: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, epsilon: float,
                      iters: int) -> torch.Tensor:
    """Batched entropic assignment with capacities: in each group g, every valid row (item) sends
    mass 1, every free column (code) receives at most 1. Returns each row's argmax column.

    ``cost`` (G, M, K) squared distances; ``rows`` (G, M) marks real items (groups are padded);
    ``cols`` (G, K) marks free codes. Costs are rescaled to [-1, 1] per group (as MiniOneRec does
    before applying epsilon). Dual updates: rows ``f = -eps LSE((g - C) / eps)``, columns
    ``g = min(0, -eps LSE((f - C) / eps))`` (the scaling for a marginal inequality).
    """
    inf = torch.tensor(float("inf"), dtype=cost.dtype, device=cost.device)
    scaled = _rescale(cost, rows[:, :, None] & cols[:, None, :], (1, 2))
    f = torch.zeros(rows.shape, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(cols.shape, dtype=cost.dtype, device=cost.device)
    for eps in annealing(epsilon, iters):
        f = torch.where(rows, -eps * torch.logsumexp((g[:, None, :] - scaled) / eps, dim=2), -inf)
        g = torch.where(cols, (-eps * torch.logsumexp((f[:, :, None] - scaled) / eps, dim=1)).clamp_max(0.0), -inf)
    return (g[:, None, :] - scaled).argmax(2)
