"""The stage's inputs: the catalog (items joined with their SIDs) and the TRAIN samples. Valid and
test samples are dropped here, on read, so nothing downstream can use them.

Both artifacts are read and checked by :mod:`components.common.artifacts`. A train sample that
mentions a retired item is dropped (its SID no longer names a catalog item) and counted; one that
mentions an item absent from the sid_map is an error (the inputs do not belong together).
"""

from __future__ import annotations

import logging

from components.common.artifacts import Catalog, Sample, read_samples
from components.common.errors import InputError

log = logging.getLogger(__name__)


def read_train_samples(samples_uri: str, catalog: Catalog) -> tuple[list[Sample], dict[str, int]]:
    """The TRAIN samples whose items are all in the catalog, and what was dropped."""
    samples = read_samples(samples_uri)
    counts = samples.counts()
    train = samples.split("train")
    if not train:
        raise InputError(f"samples {samples_uri}: no train samples (splits: {counts})")
    kept, dropped_retired = [], 0
    for sample in train:
        ids = [*sample.history, sample.target]
        unknown = [x for x in ids if x not in catalog.sid_of]
        if unknown:
            raise InputError(f"samples {samples_uri} row {sample.row}: item(s) {unknown[:5]} are not in the sid_map")
        if any(x in catalog.retired for x in ids):
            dropped_retired += 1
            continue
        kept.append(sample)
    if not kept:
        raise InputError(f"samples {samples_uri}: every train sample mentions a retired item")
    if dropped_retired:
        log.warning("dropped %d train sample(s) that mention retired items", dropped_retired)
    return kept, {"samples_by_split": counts, "train_used": len(kept), "train_dropped_retired_item": dropped_retired}
