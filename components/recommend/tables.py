"""The recommend stage's tables: the active users it may be given, and the recommendations it writes.

* ``users`` (input, ``recommend.users``): user_id (string, unique), history (list<string> of
  catalog item ids, oldest first; retired items allowed, they keep their SIDs);
* ``recommendations`` (output): one row per user: user_id, history (the items the model was
  given: the most recent ``max_history``), item_ids (best first, ``recommend.k`` of them, live
  items only), titles, scores (the SID's summed token log-probability), sids, and in thinking mode
  reasoning, reasoning_closed, reasoning_tokens. The schema metadata records the registered
  model and version, the model's and the catalog snapshot's digests (sid_map, items), the mode
  and k, and whether there are recommendations at all (``sidreasoner.recommended``; ``false``
  with ``sidreasoner.reason`` when promotion was refused: the table then has no rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from components.common import storage
from components.common.artifacts import ArtifactKind, require_columns
from components.common.errors import InputError
from components.common.serving import RequestError, ServedCatalog, UserHistory

USERS_SCHEMA = pa.schema([("user_id", pa.string()), ("history", pa.list_(pa.string()))])
RECOMMENDATIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("history", pa.list_(pa.string())), ("item_ids", pa.list_(pa.string())),
    ("titles", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())), ("sids", pa.list_(pa.string())),
    ("reasoning", pa.string()), ("reasoning_closed", pa.bool_()), ("reasoning_tokens", pa.int64()),
])
RECOMMENDATIONS = ArtifactKind("recommendations", "Dataset", "recommendations.parquet", parquet=RECOMMENDATIONS_SCHEMA)
#: Schema metadata keys of the recommendations (lineage to the model and the catalog snapshot).
META_PREFIX = "sidreasoner."


def read_users(uri: str, catalog: ServedCatalog, max_history: int) -> list[UserHistory]:
    """The active users of a ``users`` Parquet, checked (unique ids, non-empty histories of
    catalog items), histories cut to the ``max_history`` most recent items; file order kept."""
    table = storage.read_parquet(uri)
    require_columns(table, USERS_SCHEMA, "users", uri)
    users, seen = [], {}
    for row, record in enumerate(table.select(USERS_SCHEMA.names).to_pylist()):
        where = f"users {uri} row {row}"
        user, history = record["user_id"], record["history"]
        if not isinstance(user, str) or not user.strip():
            raise InputError(f"{where}: user_id must be a non-empty string (got {user!r})")
        if user in seen:
            raise InputError(f"{where}: user {user!r} is listed twice (first at row {seen[user]})")
        seen[user] = row
        if not history or any(not isinstance(i, str) or not i.strip() for i in history):
            raise InputError(f"{where} (user {user!r}): history must be a non-empty list of item ids (got {history!r})")
        try:
            catalog.history_sids(history, f"{where} (user {user!r}) history")
        except RequestError as exc:
            raise InputError(str(exc)) from None
        users.append(UserHistory(user, list(history)[-max_history:], 0))
    return users


def recommendations_table(users: Sequence[UserHistory], rows: Sequence[Mapping[str, Any]],
                          metadata: Mapping[str, Any]) -> pa.Table:
    """The output table: each user's history beside their response row, lineage in the metadata."""
    records = [{**row, "history": user.history} for user, row in zip(users, rows, strict=True)]
    table = pa.Table.from_pylist([{name: r[name] for name in RECOMMENDATIONS_SCHEMA.names} for r in records],
                                 schema=RECOMMENDATIONS_SCHEMA)
    return table.replace_schema_metadata({f"{META_PREFIX}{k}": "" if v is None else str(v).lower()
                                          if isinstance(v, bool) else str(v) for k, v in metadata.items()})
