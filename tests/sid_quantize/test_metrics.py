"""The measurements, checked against hand-counted cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.sid_quantize.config import SemanticCheckConfig
from components.sid_quantize.metrics import collisions, level_usage, reconstruction, semantic_check


def test_collisions_counts_both_definitions():
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [4, 5]])
    assert collisions(codes) == {"duplicate_sids": 2, "items_in_collisions": 5, "collision_rate": 5 / 6,
                                 "collision_rate_recipe": 3 / 6, "max_items_per_sid": 3}


def test_level_usage_utilisation_and_perplexity():
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 0]])
    first, second = level_usage(codes, [8, 4])
    assert first["used"] == 4 and first["utilisation"] == 0.5 and first["perplexity"] == pytest.approx(4.0)
    assert second["used"] == 1 and second["perplexity"] == pytest.approx(1.0) and second["max_share"] == 1.0


def test_reconstruction_relative_to_variance():
    x = np.array([[0.0, 0.0], [2.0, 2.0]])
    assert reconstruction(x, x) == {"mse": 0.0, "relative": 0.0}
    assert reconstruction(x, np.ones_like(x)) == {"mse": 1.0, "relative": 1.0}  # predicting the mean


def test_semantic_check_uses_the_leaf_category_and_falls_back_to_brand():
    items = pd.DataFrame({
        "categories": [["Office", "Pens"], ["Office", "Pens"], ["Office", "Paper"], ["Office", "Paper"]],
        "brand": ["A", "B", "A", "B"],
    })
    result = semantic_check(items, np.array([0, 0, 1, 1]), SemanticCheckConfig())
    # same code -> same leaf category in 2 of 2 pairs; random pairs share it in 2 of 6
    assert result["attribute"] == "categories" and result["p_share_given_same_code"] == 1.0
    assert result["p_share_random_pair"] == pytest.approx(2 / 6) and result["lift"] == pytest.approx(3.0)
    items["categories"] = [[], [], [], ["Office"]]
    result = semantic_check(items, np.array([0, 0, 1, 1]), SemanticCheckConfig())
    assert result["attribute"] == "brand" and result["coverage"] == {"categories": 0.25, "brand": 1.0}
    assert result["p_share_given_same_code"] == 0.0
    items["brand"] = ""
    result = semantic_check(items, np.array([0, 0, 1, 1]), SemanticCheckConfig())
    assert result["attribute"] is None and "no attribute" in result["skipped"]
    assert math.isclose(semantic_check(items, np.zeros(4, int), SemanticCheckConfig(
        attribute="categories", fallback_attribute=None, min_coverage=0.25))["p_share_random_pair"], 0.0)
