"""The rows evaluation scores: a seeded, per-split selection of ``samples``, each history mapped to SIDs.

The catalog and the samples are read and checked by :mod:`components.common.artifacts`; everything
here fails with a message naming the artifact and the row before any model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import pandas as pd

from components.common.artifacts import SPLITS, Catalog, Samples
from components.common.errors import InputError

log = logging.getLogger(__name__)


def samples_frame(samples: Samples) -> pd.DataFrame:
    """The samples as a DataFrame (``row``: the position in the samples file)."""
    frame = pd.DataFrame([asdict(s) for s in samples.rows])
    frame["history"] = [list(h) for h in frame["history"]]
    return frame


def select_rows(samples: pd.DataFrame, splits: Sequence[str], max_examples: int | None, seed: int,
                catalog: Catalog, uri: str) -> pd.DataFrame:
    """The rows to score: every row of ``splits`` (or a seeded subset of ``max_examples`` per
    split, kept in file order), each history fully mapped to SIDs."""
    counts = samples["split"].value_counts().to_dict()
    parts = []
    for split in splits:
        rows = samples[samples["split"] == split]
        if rows.empty:
            raise InputError(f"samples {uri}: the {split!r} split is empty (rows per split: "
                             f"{ {s: int(counts.get(s, 0)) for s in SPLITS} }); nothing to evaluate")
        if max_examples is not None and len(rows) > max_examples:
            rng = np.random.default_rng(seed)
            rows = rows.iloc[np.sort(rng.choice(len(rows), size=max_examples, replace=False))]
        parts.append(rows)
    selected = pd.concat(parts, ignore_index=True)
    for row, history in zip(selected["row"], selected["history"]):
        missing = [i for i in history if i not in catalog.sid_of]
        if missing:
            raise InputError(f"samples {uri} row {row}: history item(s) {missing[:3]} have no SID in the sid_map")
    outside = int((~selected["target"].isin(set(catalog.item_ids))).sum())
    if outside:
        log.warning("%d evaluated targets are not in the catalog (retired or unknown): they count as misses",
                    outside)
    return selected.reset_index(drop=True)
