"""Unique SIDs, always: greedy codes -> Sinkhorn re-assignment -> nearest free code.

1. **Keep.** Items whose greedy code is unique keep it. Among items sharing a code, the one
   nearest to the code's last-level vector keeps it (ties: catalog order); the others are
   displaced. Items whose code is already taken (``occupied``: a previous run's SIDs, active or
   retired, in incremental assignment) are all displaced.
2. **Sinkhorn rounds** (the recipe: epsilon 0.003, up to 20 rounds). Displaced items sharing a
   prefix (their codes at levels 0..L-2) are spread over that prefix's *free* last-level codes
   by an entropic transport on their last-level residual distances in which every item sends
   one unit and every free code takes at most one (``sinkhorn.capacity_assign``). MiniOneRec
   runs Sinkhorn with *uniform* column marginals over all codes instead; with a handful of
   colliding items and 256 codes that plan is nearly uniform and its argmax says little, so
   capacities are used here. When two items pick the same code, the nearer one gets it; the
   others wait for the next round.
3. **Nearest free code** (guaranteed). Each remaining item takes the nearest free last-level
   code under its own prefix. When that prefix is full (more items than last-level codes share
   it, e.g. hundreds of identical embeddings), the item moves up to the deepest prefix with room
   and descends it greedily, always into a sub-tree with a free SID. Since the caller checks
   that all SIDs fit in the codebooks' capacity, every item is placed.

The number of levels never changes, so SIDs keep the token format and vocabulary of the
codebooks (``components.common.sid.vocabulary(codebook_sizes)``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch

from components.common.errors import InputError
from components.sid_quantize.config import CollisionConfig
from components.sid_quantize.quantizer import residual_before
from components.sid_quantize.sinkhorn import capacity_assign

Code = tuple[int, ...]


class CollisionError(InputError):
    """The SIDs asked for cannot all be distinct (more items than the codebooks can express)."""


def resolve_collisions(z: torch.Tensor, codes: torch.Tensor, codebooks: list[torch.Tensor], cfg: CollisionConfig,
                       occupied: Iterable[Code] = ()) -> tuple[np.ndarray, dict[str, int]]:
    """Distinct codes for the items with latents ``z`` and greedy ``codes``, none in ``occupied``.

    Returns the final codes (n, levels) and how many items each step handled.
    """
    n, levels = codes.shape
    sizes = [int(c.shape[0]) for c in codebooks]
    taken: set[Code] = set(occupied)
    if n + len(taken) > math.prod(sizes):
        raise CollisionError(f"{n} items + {len(taken)} SIDs already taken exceed the {math.prod(sizes):,} SIDs "
                             f"codebooks of sizes {sizes} can express; raise codebook_sizes")
    final = codes.cpu().numpy().astype(np.int64)
    last = codebooks[-1].detach()
    r_last = residual_before(z, codes, [c.detach() for c in codebooks], levels - 1)
    own = ((r_last - last[codes[:, -1]]) ** 2).sum(1).cpu().numpy()

    groups: dict[Code, list[int]] = defaultdict(list)
    for i, row in enumerate(final):
        groups[tuple(int(c) for c in row)].append(i)
    displaced: list[int] = []
    report = {"collided_with_existing": 0}
    for code, members in groups.items():
        if code in taken:
            displaced.extend(members)
            report["collided_with_existing"] += len(members)
            continue
        keeper = min(members, key=lambda i: (own[i], i))
        displaced.extend(i for i in members if i != keeper)
        taken.add(code)
    report["reassigned"] = len(displaced)

    pending, rounds = sorted(displaced), 0
    used_last: dict[Code, set[int]] = defaultdict(set)
    for code in taken:
        used_last[code[:-1]].add(code[-1])
    while pending and rounds < cfg.sinkhorn_rounds:
        rounds += 1
        pending = _sinkhorn_round(pending, final, r_last, last, used_last, taken, cfg)
    report["sinkhorn_rounds_run"] = rounds
    report["resolved_by_sinkhorn"] = report["reassigned"] - len(pending)

    report["resolved_by_nearest_free"], report["resolved_in_another_prefix"] = _nearest_free(
        pending, final, z, [c.detach() for c in codebooks], sizes, taken)
    return final, report


#: Upper bound on (groups x items x codes) entries solved in one batched Sinkhorn call.
BATCH_ENTRIES = 1 << 22


def _sinkhorn_round(pending: list[int], final: np.ndarray, r_last: torch.Tensor, last: torch.Tensor,
                    used_last: dict[Code, set[int]], taken: set[Code], cfg: CollisionConfig) -> list[int]:
    """One round of capacity-constrained Sinkhorn per prefix (batched over prefixes); when two
    items of a prefix pick the same code the nearer one gets it. Returns the items still unplaced."""
    by_prefix: dict[Code, list[int]] = defaultdict(list)
    for i in pending:
        by_prefix[tuple(int(c) for c in final[i, :-1])].append(i)
    k = last.shape[0]
    still = [i for prefix, members in by_prefix.items() if len(used_last[prefix]) == k for i in members]
    groups = sorted(((p, m) for p, m in by_prefix.items() if len(used_last[p]) < k), key=lambda g: len(g[1]))
    last64 = last.double()
    start = 0
    while start < len(groups):
        stop = start + 1
        while stop < len(groups) and (stop - start + 1) * len(groups[stop][1]) * k <= BATCH_ENTRIES:
            stop += 1
        batch, start = groups[start:stop], stop
        width = len(batch[-1][1])  # groups are sorted by size: the last is the widest
        index = torch.zeros(len(batch), width, dtype=torch.long)
        rows = torch.zeros(len(batch), width, dtype=torch.bool)
        cols = torch.ones(len(batch), k, dtype=torch.bool)
        for g, (prefix, members) in enumerate(batch):
            index[g, : len(members)] = torch.tensor(members)
            rows[g, : len(members)] = True
            cols[g, sorted(used_last[prefix])] = False
        device = r_last.device
        residual = r_last[index.to(device)].double()
        cost = ((residual * residual).sum(-1, keepdim=True) - 2.0 * residual @ last64.T
                + (last64 * last64).sum(-1)).clamp_min(0.0)
        choice = capacity_assign(cost, rows.to(device), cols.to(device), cfg.sinkhorn_epsilon, cfg.sinkhorn_iters)
        chosen_cost = cost.gather(2, choice[:, :, None])[:, :, 0].cpu().numpy()
        choice = choice.cpu().numpy()
        for g, (prefix, members) in enumerate(batch):
            for pos in sorted(range(len(members)), key=lambda p: (chosen_cost[g, p], members[p])):
                item, code = members[pos], int(choice[g, pos])
                if code in used_last[prefix]:
                    still.append(item)
                    continue
                used_last[prefix].add(code)
                final[item, -1] = code
                taken.add((*prefix, code))
    return sorted(still)


def _nearest_free(pending: list[int], final: np.ndarray, z: torch.Tensor, codebooks: list[torch.Tensor],
                  sizes: list[int], taken: set[Code]) -> tuple[int, int]:
    """Place every pending item on the nearest free SID (see the module docstring); returns
    (items placed under their own prefix, items moved to another prefix)."""
    levels = len(sizes)
    counts: dict[Code, int] = defaultdict(int)
    for code in taken:
        for depth in range(levels):
            counts[code[:depth]] += 1

    def capacity(prefix: Code) -> int:
        return math.prod(sizes[len(prefix):])

    def descend(item: int, prefix: Code) -> Code:
        level = len(prefix)
        residual = z[item].clone()
        for lv, code in enumerate(prefix):
            residual -= codebooks[lv][code]
        order = torch.argsort(((codebooks[level] - residual) ** 2).sum(1), stable=True).tolist()
        for code in order:
            child = (*prefix, int(code))
            if level == levels - 1:
                if child not in taken:
                    return child
            elif counts[child] < capacity(child):
                return descend(item, child)
        raise AssertionError(f"prefix {prefix} has room by count but no free SID")  # unreachable

    own_prefix = moved = 0
    for item in pending:
        original = tuple(int(c) for c in final[item])
        depth = next(d for d in range(levels - 1, -1, -1) if counts[original[:d]] < capacity(original[:d]))
        code = descend(item, original[:depth])
        final[item] = code
        taken.add(code)
        for d in range(levels):
            counts[code[:d]] += 1
        if depth == levels - 1:
            own_prefix += 1
        else:
            moved += 1
    return own_prefix, moved
