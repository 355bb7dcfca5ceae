"""Arrow schemas of the stage's Parquet outputs (the contract the training stages read)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

#: ``corpus``: one row per training example. Chat rows (``loss="response"``): ``messages`` are the
#: system?/user/assistant turns, the assistant content being the bare answer, also in ``target``;
#: ``text`` is null. Narrative rows (``loss="full"``): ``text`` is the whole training text,
#: ``messages`` is empty, ``target`` is the SID the narrative is about or ends with.
CORPUS_SCHEMA = pa.schema([
    ("task", pa.string()),
    ("loss", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("text", pa.string()),
    ("target", pa.string()),
    ("source", pa.string()),
    ("item_id", pa.string()),
    ("user_id", pa.string()),
    ("teacher_model", pa.string()),
    ("prompt_hash", pa.string()),
])

#: ``reasoning``: the reasoning-activation and GRPO data. ``reasoning`` is the user-centric step-1
#: reasoning path; it never mentions the target's SID or title.
REASONING_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("history_item_ids", pa.list_(pa.string())),
    ("history_sids", pa.list_(pa.string())),
    ("reasoning", pa.string()),
    ("target_item_id", pa.string()),
    ("target_sid", pa.string()),
    ("source", pa.string()),
])


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with exactly the schema's fields) as a table of ``schema``."""
    return pa.Table.from_pylist(rows, schema=schema)
