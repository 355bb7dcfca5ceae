"""Content-addressed store of teacher responses in object storage (local or gs://), safe to share
by concurrent runs on any number of machines.

A request's key is the sha256 of (model, messages, sampling parameters, attempt number): the
same request always maps to the same object, whatever run, machine or endpoint sends it (the
endpoint URL and the API key are not part of the key). Each response is written as its own
JSON object the moment it arrives, atomically (``storage.write_text``), so a run that crashes or
is killed loses at most the requests in flight, and a re-run answers everything already done
from here without a single call.

``attempt`` separates the re-requests made after a rejected output (attempt 1, 2, ...): replaying
a run from the cache re-validates attempt 0, finds it rejected again, and reads attempt 1 —
exactly the sequence the original run went through.

**Shared by concurrent runs.** Nothing is paid for twice because of another run:

* every lookup reads the store itself (no index read once at start), so an answer another run
  stored a moment ago is found;
* before paying, a client takes the request's *claim*, ``<root>/_claims/<key>.json``, with a
  conditional write (created only if absent: a GCS generation precondition; a file lock
  locally, :func:`storage.write_if`). Whoever holds it pays; everyone else waits for the answer
  to appear in the store;
* a claim is a lease: its holder renews it every ``lease_s / 3`` seconds while the request is in
  flight and deletes it once the answer is stored. A holder that crashed or hung stops renewing,
  and ``lease_s`` after the last renewal another client takes the claim over (conditional on the
  version it saw, so one client wins) and pays; on the holder's own host a client takes it over
  at once when the holder's process is gone (a killed run restarted). Leases compare wall
  clocks: hosts' clocks must agree to well within ``lease_s``.

Every stored answer has the secrets this process knows (:mod:`components.common.logs`) removed
before it is written, and again when it is read (entries written by an older version).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from components.common import owner, storage
from components.common.logs import redact_values

log = logging.getLogger(__name__)

CLAIMS = "_claims"
#: Longest pause between two looks at a request another client is paying for.
MAX_POLL_S = 2.0


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], attempt: int) -> str:
    """The cache key of one request (hex sha256)."""
    canonical = json.dumps({"model": model, "messages": messages, "params": params, "attempt": attempt},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Claim:
    """This client's lease on paying for one request."""

    key: str
    uri: str
    version: str
    renewer: asyncio.Task | None = field(default=None, repr=False)
    lost: bool = False


@dataclass
class ClaimStats:
    """How the claims went (the stage reports them with the teacher's accounting)."""

    waited: int = 0
    """Requests whose answer another client was paying for: waited for, not paid."""
    answered_by_others: int = 0
    """Of those, answered by the other client (the rest were claimed after it gave up)."""
    taken_over: int = 0
    """Claims taken over from a holder whose lease ran out (it crashed or hung)."""
    lost: int = 0
    """Claims this client lost while paying (its lease ran out: it was too slow to renew)."""


class ResponseCache:
    """Teacher responses under ``root``: ``<root>/<key[:2]>/<key>.json``, claims under ``_claims/``."""

    def __init__(self, root: str, lease_s: float = 60.0):
        self.root, self.lease_s = root, lease_s
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.claims = ClaimStats()
        self._stored = 0

    def _uri(self, key: str) -> str:
        return storage.join(self.root, key[:2], f"{key}.json")

    def _claim_uri(self, key: str) -> str:
        return storage.join(self.root, CLAIMS, f"{key}.json")

    def open(self) -> int:
        """Count the stored responses (for the log); lookups never rely on this count."""
        names = storage.list_files(self.root) if storage.is_gcs(self.root) or storage.exists(self.root) else []
        self._stored = sum(1 for name in names if name.endswith(".json") and not name.startswith(f"{CLAIMS}/"))
        log.info("teacher cache %s: %d stored responses", self.root, self._stored)
        return self._stored

    def __len__(self) -> int:
        return self._stored

    async def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for ``key`` (read from the store every time), or None."""
        try:
            entry = await asyncio.to_thread(storage.read_json, self._uri(key))
        except storage.ArtifactNotFound:
            return None
        except json.JSONDecodeError as exc:
            log.warning("teacher cache entry %s unreadable (%s); requesting again", key, exc)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            log.warning("teacher cache entry %s has no text; requesting again", key)
            return None
        return redact_values(entry)

    async def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key`` (secrets removed; atomic; visible to every client as soon
        as this returns)."""
        text = json.dumps(redact_values(entry), indent=2, sort_keys=True, default=str) + "\n"
        await asyncio.to_thread(storage.write_text, self._uri(key), text)
        self._stored += 1

    # -- claims ------------------------------------------------------------------------------

    async def claim(self, key: str) -> tuple[dict[str, Any] | None, Claim | None]:
        """Before paying for ``key``: ``(entry, None)`` when an answer is (or becomes) stored,
        else ``(None, claim)``, this client holding the claim to pay for it."""
        poll, waited = 0.05, False
        while True:
            entry = await self.get(key)
            if entry is not None:
                if waited:
                    self.claims.answered_by_others += 1
                return entry, None
            claim = await asyncio.to_thread(self._try_claim, key)
            if claim is not None:
                entry = await self.get(key)  # stored by the previous holder just before it let go
                if entry is not None:
                    await self.release(claim)
                    return entry, None
                claim.renewer = asyncio.create_task(self._renew(claim))
                return None, claim
            if not waited:
                waited = True
                self.claims.waited += 1
                log.debug("teacher request %s is being paid for by another client; waiting for its answer", key)
            await asyncio.sleep(poll)
            poll = min(poll * 2, MAX_POLL_S, self.lease_s / 4)

    def _lease(self) -> bytes:
        return json.dumps({"owner": self.owner, **owner.record(), "expires_at": time.time() + self.lease_s,
                           "lease_s": self.lease_s}).encode()

    def _try_claim(self, key: str) -> Claim | None:
        uri = self._claim_uri(key)
        current = storage.read_versioned(uri)
        if current is None:
            version = storage.write_if(uri, self._lease(), None)
        else:
            data, seen = current
            holder = _parse_lease(data)
            if holder.get("owner") == self.owner:  # ours already (a retried write that had succeeded)
                return Claim(key, uri, seen)
            overdue = time.time() - float(holder.get("expires_at", 0))
            if overdue < 0 and not owner.gone(holder):
                return None
            version = storage.write_if(uri, self._lease(), seen)
            if version is not None:
                self.claims.taken_over += 1
                why = f"ran out {overdue:.0f}s ago" if overdue >= 0 else "belongs to a process that is gone"
                log.warning("teacher request %s: the claim of %s %s (its holder crashed or hung); this client "
                            "pays for it instead", key, holder.get("owner", "?"), why)
        if version is None:  # another client got there first
            current = storage.read_versioned(uri)
            if current is not None and _parse_lease(current[0]).get("owner") == self.owner:
                return Claim(key, uri, current[1])
            return None
        return Claim(key, uri, version)

    async def _renew(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            version = await asyncio.to_thread(storage.write_if, claim.uri, self._lease(), claim.version)
            if version is None:
                claim.lost = True
                self.claims.lost += 1
                log.warning("teacher request %s: lost its claim (not renewed in time); another client may pay "
                            "for it too", claim.key)
                return
            claim.version = version

    async def release(self, claim: Claim) -> None:
        """Let go of a claim (after its answer was stored, or when paying failed)."""
        if claim.renewer is not None:
            claim.renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claim.renewer
        if not claim.lost:
            try:
                await asyncio.to_thread(storage.delete_if, claim.uri, claim.version)
            except storage.StorageError as exc:  # it runs out by itself; the answer is stored anyway
                log.warning("teacher request %s: could not release its claim (%s)", claim.key, exc)


def _parse_lease(data: bytes) -> dict[str, Any]:
    try:
        lease = json.loads(data)
    except ValueError:
        return {}
    return lease if isinstance(lease, dict) else {}
