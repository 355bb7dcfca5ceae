"""Content-addressed store of teacher responses in object storage (local or gs://).

A request's key is the sha256 of (model, messages, sampling parameters, attempt number): the
same request always maps to the same object, whatever run, machine or endpoint sends it (the
endpoint URL and the API key are not part of the key). Each response is written as its own
JSON object the moment it arrives, atomically (``storage.write_json``), so a run that crashes or
is killed loses at most the requests in flight, and a re-run answers everything already done
from here without a single call.

``attempt`` separates the re-requests made after a rejected output (attempt 1, 2, ...): replaying
a run from the cache re-validates attempt 0, finds it rejected again, and reads attempt 1 —
exactly the sequence the original run went through.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from components.common import storage

log = logging.getLogger(__name__)


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], attempt: int) -> str:
    """The cache key of one request (hex sha256)."""
    canonical = json.dumps({"model": model, "messages": messages, "params": params, "attempt": attempt},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Teacher responses under ``root``: ``<root>/<key[:2]>/<key>.json``."""

    def __init__(self, root: str):
        self.root = root
        self._keys: set[str] | None = None

    def _uri(self, key: str) -> str:
        return storage.join(self.root, key[:2], f"{key}.json")

    def open(self) -> int:
        """List the stored keys once (one listing instead of a lookup per request); returns how many."""
        names = storage.list_files(self.root) if storage.is_gcs(self.root) or storage.exists(self.root) else []
        self._keys = {name.rsplit("/", 1)[-1].removesuffix(".json") for name in names if name.endswith(".json")}
        log.info("teacher cache %s: %d stored responses", self.root, len(self._keys))
        return len(self._keys)

    def __len__(self) -> int:
        return len(self._keys or ())

    async def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for ``key``, or None."""
        if self._keys is None:
            self.open()
        if key not in self._keys:
            return None
        try:
            entry = await asyncio.to_thread(storage.read_json, self._uri(key))
        except (storage.StorageError, json.JSONDecodeError) as exc:
            log.warning("teacher cache entry %s unreadable (%s); requesting again", key, exc)
            self._keys.discard(key)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            log.warning("teacher cache entry %s has no text; requesting again", key)
            self._keys.discard(key)
            return None
        return entry

    async def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key`` (atomic; visible to a re-run as soon as this returns)."""
        if self._keys is None:
            self.open()
        await asyncio.to_thread(storage.write_json, self._uri(key), entry)
        self._keys.add(key)
