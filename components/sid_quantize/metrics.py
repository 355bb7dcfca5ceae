"""Measurements of a SID assignment: collisions, codebook use, reconstruction, semantics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from components.sid_quantize.config import SemanticCheckConfig


def collisions(codes: np.ndarray) -> dict[str, Any]:
    """How many SIDs are shared. ``collision_rate`` = items sharing their SID with another item /
    items; ``collision_rate_recipe`` = (items - distinct SIDs) / items (MiniOneRec's definition)."""
    n = len(codes)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    shared = counts[counts > 1]
    return {
        "duplicate_sids": int(len(shared)),
        "items_in_collisions": int(shared.sum()),
        "collision_rate": float(shared.sum() / n) if n else 0.0,
        "collision_rate_recipe": float((n - len(counts)) / n) if n else 0.0,
        "max_items_per_sid": int(counts.max()) if n else 0,
    }


def level_usage(codes: np.ndarray, sizes: list[int]) -> list[dict[str, Any]]:
    """Per level: codes used, utilisation (used / size), perplexity (exp of the code entropy;
    equals the size when use is uniform) and the largest share of items on one code."""
    out = []
    for level, size in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log(p)).sum())
        out.append({
            "level": level, "codebook_size": size, "used": int((counts > 0).sum()),
            "utilisation": float((counts > 0).sum() / size), "perplexity": math.exp(entropy),
            "max_share": float(counts.max() / counts.sum()),
        })
    return out


def reconstruction(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """``mse``: mean squared error per coordinate; ``relative``: total squared error over the
    total variance of ``x`` (the fraction of variance the SIDs do not explain)."""
    err = ((x - x_hat) ** 2).sum()
    var = ((x - x.mean(0)) ** 2).sum()
    return {"mse": float(err / x.size), "relative": float(err / var) if var > 0 else 0.0}


def _attribute_values(items: pd.DataFrame, attribute: str) -> pd.Series:
    if attribute == "categories":  # the most specific category of each item's path
        return items["categories"].map(lambda cats: next((c for c in reversed(list(cats)) if c), "")
                                       if cats is not None else "")
    return items[attribute].fillna("").astype(str).str.strip()


def _pairs(counts: np.ndarray) -> int:
    return int((counts * (counts - 1) // 2).sum())


def semantic_check(items: pd.DataFrame, first_level: np.ndarray, cfg: SemanticCheckConfig) -> dict[str, Any]:
    """P(two items share the attribute | they share the first-level code) against P(share |
    random pair), counted exactly over all pairs of items that have the attribute.

    ``lift`` > 1 means the first level groups semantically similar items.
    """
    chosen = None
    coverage = {}
    for attribute in [cfg.attribute, cfg.fallback_attribute]:
        if attribute is None or attribute in coverage:
            continue
        values = _attribute_values(items, attribute)
        coverage[attribute] = float((values != "").mean()) if len(values) else 0.0
        if coverage[attribute] >= cfg.min_coverage:
            chosen = attribute
            break
    if chosen is None:
        return {"attribute": None, "coverage": coverage,
                "skipped": f"no attribute has a value for at least {cfg.min_coverage:.0%} of the items"}
    values = _attribute_values(items, chosen).to_numpy()
    has = values != ""
    frame = pd.DataFrame({"code": first_level[has], "value": values[has]})
    all_pairs = _pairs(np.array([len(frame)]))
    same_value = _pairs(frame.groupby("value").size().to_numpy())
    same_code = _pairs(frame.groupby("code").size().to_numpy())
    same_both = _pairs(frame.groupby(["code", "value"]).size().to_numpy())
    p_random = same_value / all_pairs if all_pairs else 0.0
    p_code = same_both / same_code if same_code else 0.0
    return {
        "attribute": chosen, "coverage": coverage, "items": int(has.sum()),
        "distinct_values": int(frame["value"].nunique()),
        "pairs_same_code": same_code,
        "p_share_given_same_code": p_code, "p_share_random_pair": p_random,
        "lift": p_code / p_random if p_random else None,
    }

