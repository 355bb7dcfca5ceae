"""Annealed Sinkhorn: balanced assignment (equal cluster masses) and capacity-one assignment
(collision resolution), the latter against the exact optimum."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from components.sid_quantize.sinkhorn import balanced_assign, capacity_assign


def test_balanced_assign_spreads_rows_that_prefer_one_column():
    cost = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.1, 1.0], [0.0, 1.0, 0.1]], dtype=torch.float64)
    assert balanced_assign(cost, 0.003, 50).tolist() == [0, 1, 2]


def test_capacity_assign_places_lone_items_nearest_and_spreads_contenders():
    cost = torch.tensor([
        [[0.0, 0.2, 0.9, 0.5], [0.0, 0.9, 0.1, 0.5]],  # two items wanting code 0, second choices differ
        [[0.7, 0.3, 0.1, 0.6], [0.0, 0.0, 0.0, 0.0]],  # a lone item (second row is padding)
    ], dtype=torch.float64)
    rows = torch.tensor([[True, True], [True, False]])
    cols = torch.tensor([[True, True, True, True], [True, True, False, True]])  # code 2 taken in group 1
    choice = capacity_assign(cost, rows, cols, epsilon=0.003, iters=50)
    assert choice[0].tolist() == [0, 2]  # the cheapest total (0.1): item 1 moves to its second choice
    assert choice[1, 0] == 1  # nearest free code, the taken one excluded


def test_capacity_assign_is_near_optimal_on_clustered_contenders():
    rng = np.random.default_rng(0)
    optimal = distinct = 0
    for _ in range(100):
        m, k = int(rng.integers(2, 8)), 32
        base = rng.standard_normal(16)
        items = base + 0.05 * rng.standard_normal((m, 16))  # near-duplicates competing for codes
        codes = base + 0.3 * rng.standard_normal((k, 16))
        cost = ((items[:, None, :] - codes[None]) ** 2).sum(-1)
        choice = capacity_assign(torch.from_numpy(cost)[None], torch.ones(1, m, dtype=torch.bool),
                                 torch.ones(1, k, dtype=torch.bool), 0.003, 50)[0].numpy()
        rows, cols = linear_sum_assignment(cost)
        optimal += bool((choice[rows] == cols).all())
        distinct += len(set(choice.tolist())) == m
    # most groups are solved exactly in one round; the rest leave a conflict for the next round
    assert optimal >= 80 and distinct >= 80
