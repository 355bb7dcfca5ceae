"""The ``sid_map`` this stage builds and extends: one row per item ever assigned a SID.

Statuses: ``active`` (in the current catalog, SID kept from the previous run or first run),
``new`` (in the current catalog, SID assigned in this incremental run), ``retired`` (no longer in
the catalog; the row stays forever so its SID is never reused). Downstream stages treat
``status != retired`` as the catalog. Every row's SID is distinct, retired rows included. The
contract, its reader and writer are :mod:`components.common.artifacts`; this is the array form
the quantization code works on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from components.common import artifacts


@dataclass
class SidMap:
    item_ids: list[str]
    codes: np.ndarray
    """int64 (rows, levels)."""
    statuses: list[str]

    def table(self, codebook_sizes: list[int], sid_space: str) -> pa.Table:
        return artifacts.sid_map_table(self.item_ids, self.codes.tolist(), self.statuses, codebook_sizes, sid_space)

    @classmethod
    def read(cls, uri: str, codebook_sizes: list[int]) -> tuple[SidMap, str | None]:
        """A sid_map written with codebooks of ``codebook_sizes``, and its SID space."""
        rows = artifacts.read_sid_map(uri, codebook_sizes)
        codes = np.asarray(rows.codes, dtype=np.int64).reshape(len(rows.item_ids), len(codebook_sizes))
        return cls(rows.item_ids, codes, rows.statuses), rows.sid_space
