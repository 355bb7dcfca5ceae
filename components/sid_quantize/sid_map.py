"""The ``sid_map`` artifact: one row per item ever assigned a SID.

Columns: ``item_id`` (string), ``codes`` (list<int32>, one per level), ``sid`` (string, made by
``components.common.sid.format_sid``), ``status``:

* ``active``: in the current catalog, SID kept from the previous run (or first run);
* ``new``: in the current catalog, SID assigned in this (incremental) run;
* ``retired``: no longer in the catalog; the row stays forever so its SID is never reused.

Downstream stages treat ``status != retired`` as the catalog. Every row's SID is distinct,
retired rows included. The schema metadata records ``levels`` and ``codebook_sizes`` (also in
the codebooks config and the stats), so readers know the SID length without parsing rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from components.common import storage
from components.common.sid import SidError, format_sid, parse_sid

STATUSES = ("active", "new", "retired")
SCHEMA = pa.schema([("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("sid", pa.string()),
                    ("status", pa.string())])


class SidMapError(ValueError):
    """A sid_map artifact is malformed; the message names the file and the row."""


@dataclass
class SidMap:
    item_ids: list[str]
    codes: np.ndarray
    """int64 (rows, levels)."""
    statuses: list[str]

    def table(self, codebook_sizes: list[int]) -> pa.Table:
        sids = [format_sid(row) for row in self.codes.tolist()]
        metadata = {"levels": str(self.codes.shape[1]), "codebook_sizes": json.dumps(codebook_sizes)}
        return pa.Table.from_arrays(
            [pa.array(self.item_ids, pa.string()), pa.array(self.codes.astype(np.int32).tolist(), pa.list_(pa.int32())),
             pa.array(sids, pa.string()), pa.array(self.statuses, pa.string())],
            schema=SCHEMA.with_metadata(metadata))


def read_sid_map(uri: str, codebook_sizes: list[int]) -> SidMap:
    """Read and validate a sid_map written with codebooks of ``codebook_sizes``."""
    table = storage.read_parquet(uri)
    missing = [c for c in SCHEMA.names if c not in table.column_names]
    if missing:
        raise SidMapError(f"{uri}: missing column(s) {missing}; found {table.column_names}")
    if table.num_rows == 0:
        raise SidMapError(f"{uri}: no rows")
    item_ids = table.column("item_id").to_pylist()
    codes_list = table.column("codes").to_pylist()
    sids = table.column("sid").to_pylist()
    statuses = table.column("status").to_pylist()
    levels = len(codebook_sizes)
    seen_items: dict[str, int] = {}
    seen_sids: dict[tuple[int, ...], int] = {}
    for row, (item, codes, sid, status) in enumerate(zip(item_ids, codes_list, sids, statuses)):
        where = f"{uri} row {row} (item_id {item!r})"
        if item is None or item in seen_items:
            raise SidMapError(f"{where}: item_id is null or repeats row {seen_items.get(item)}")
        seen_items[item] = row
        if status not in STATUSES:
            raise SidMapError(f"{where}: status {status!r} is not one of {list(STATUSES)}")
        if codes is None or len(codes) != levels:
            raise SidMapError(f"{where}: {len(codes or [])} codes, but the codebooks have {levels} levels")
        if any(c is None or not 0 <= c < size for c, size in zip(codes, codebook_sizes)):
            raise SidMapError(f"{where}: codes {codes} outside codebook sizes {codebook_sizes}")
        try:
            if parse_sid(sid) != tuple(codes):
                raise SidMapError(f"{where}: sid {sid!r} does not match codes {codes}")
        except SidError as exc:
            raise SidMapError(f"{where}: {exc}") from None
        key = tuple(codes)
        if key in seen_sids:
            raise SidMapError(f"{where}: SID {sid} repeats row {seen_sids[key]}")
        seen_sids[key] = row
    return SidMap(item_ids, np.asarray(codes_list, dtype=np.int64).reshape(len(item_ids), levels), statuses)
