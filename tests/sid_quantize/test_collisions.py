"""Unique SIDs on adversarial inputs: duplicate embeddings, all-identical embeddings, a full
prefix, SIDs already taken, and more items than the codebooks can express."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.sid_quantize.collisions import CollisionError, resolve_collisions
from components.sid_quantize.config import CollisionConfig, RQKMeansConfig
from components.sid_quantize.metrics import collisions
from components.sid_quantize.quantizer import rq_encode
from components.sid_quantize.rq_kmeans import train_rq_kmeans


def quantize(x: torch.Tensor, sizes: list[int], cfg: CollisionConfig = CollisionConfig(), occupied=()):
    model, _ = train_rq_kmeans(x, sizes, RQKMeansConfig(iters=20), cfg, seed=0)
    codebooks = [c.detach() for c in model.codebooks]
    greedy = rq_encode(x, codebooks)
    final, report = resolve_collisions(x, greedy, codebooks, cfg, occupied)
    return greedy.numpy(), final, report


def assert_unique(codes: np.ndarray, sizes: list[int]) -> None:
    assert len({tuple(row) for row in codes.tolist()}) == len(codes)
    assert (codes >= 0).all() and all((codes[:, lv] < size).all() for lv, size in enumerate(sizes))


def test_duplicate_embeddings_get_distinct_sids_near_their_greedy_code():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    x[100:130] = x[7]  # 31 copies of one item
    x[200:205] = x[9]
    greedy, final, report = quantize(x, [8, 8, 64])
    assert collisions(greedy)["max_items_per_sid"] >= 31
    assert_unique(final, [8, 8, 64])
    assert report["reassigned"] == report["resolved_by_sinkhorn"] + report["resolved_by_nearest_free"] \
        + report["resolved_in_another_prefix"]
    assert report["resolved_by_sinkhorn"] > 0
    # copies stay under their shared prefix (64 last-level codes are plenty for 31 copies)
    copies = final[[7, *range(100, 130)]]
    assert (copies[:, :2] == greedy[7, :2]).all()
    # items that did not collide keep their greedy code
    alone = [i for i in range(300) if (greedy == greedy[i]).all(1).sum() == 1]
    assert (final[alone] == greedy[alone]).all()


def test_all_identical_embeddings_overflowing_a_prefix():
    x = torch.ones(200, 4)
    greedy, final, report = quantize(x, [4, 4, 16])
    assert len({tuple(r) for r in greedy.tolist()}) == 1  # greedy: everything on one SID
    assert_unique(final, [4, 4, 16])
    assert report["reassigned"] == 199
    assert report["resolved_by_sinkhorn"] == 15  # identical rows: one winner per round, until the prefix is full
    assert report["resolved_by_nearest_free"] == 0
    assert report["resolved_in_another_prefix"] == 199 - 15


def test_sinkhorn_can_be_skipped_and_nearest_free_still_guarantees_uniqueness():
    x = torch.ones(50, 4)
    _, final, report = quantize(x, [2, 2, 16], CollisionConfig(sinkhorn_rounds=0))
    assert_unique(final, [2, 2, 16])
    assert report["resolved_by_sinkhorn"] == 0 and report["sinkhorn_rounds_run"] == 0
    assert report["resolved_by_nearest_free"] == 15


def test_occupied_sids_are_avoided():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 6, generator=g)
    greedy, _, _ = quantize(x, [4, 4, 16])
    occupied = {tuple(row) for row in greedy[:40].tolist()}  # pretend a previous run holds these
    _, final, report = quantize(x, [4, 4, 16], occupied=occupied)
    assert report["collided_with_existing"] >= 40
    assert_unique(final, [4, 4, 16])
    assert not occupied & {tuple(row) for row in final.tolist()}


def test_exactly_full_codebooks_and_one_item_too_many():
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    _, final, _ = quantize(x, [4, 4])
    assert len({tuple(r) for r in final.tolist()}) == 16 == math.prod([4, 4])
    with pytest.raises(CollisionError, match="exceed the 16 SIDs"):
        quantize(x, [4, 4], occupied={(0, 0)})


def test_single_level_codebook():
    x = torch.ones(32, 3)  # identical items filling a one-level codebook exactly
    _, final, _ = quantize(x, [32])
    assert_unique(final, [32])

