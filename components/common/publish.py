"""A stage's outputs appear together or not at all.

:meth:`~components.common.stage.Stage.execute` does this for every stage; the stage's code
writes its outputs as it always has, to the URIs it is handed, which are staging URIs:

1. **Stage.** Each output ``<folder>/<name>`` is written at ``<folder>/.staging-<token>/<name>``
   (the same file system or bucket, so moving it costs a rename or a server-side copy). A
   failing stage leaves nothing at the final URIs, and its staging folder is removed; one killed
   outright (SIGKILL, a lost node) leaves a hidden staging folder, which the next attempt of the
   stage at the same place removes once its owner is gone (same host and a dead process, or a
   day old).
2. **Publish.** Once ``run`` returned and every output is digested, the publish record
   ``<folder>/_PUBLISH.<stage>.json`` is written in state ``publishing`` (listing every output
   and its digest), the outputs are moved to their final URIs (:func:`storage.move`: a folder
   keeps its old version readable until the new one is in place), and the record is rewritten in
   state ``complete``. A kill in between leaves the record at ``publishing``.
3. **Read.** :func:`published_digest` is what a reader (``Stage.execute``, for every input)
   asks of an input: an input listed by its producer's record in state ``publishing`` belongs to
   an interrupted publish and is refused; one listed as ``complete`` must still have the digest
   the record gives (the reader compares the digest it computes anyway). An artifact without a
   record (made by hand, by a tool, or before records existed) is taken as it is.

Both backends follow the same steps: local paths (including the ``/gcs/...`` paths kfp hands a
task on a cluster) and ``gs://`` URIs.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common import owner, storage
from components.common.errors import InputError

log = logging.getLogger(__name__)

#: The publish record of a stage's outputs in their folder.
RECORD = "_PUBLISH.{stage}.json"
STAGING = ".staging-"
OWNER = "_OWNER.json"
#: A staging folder whose owner cannot be checked (another host) is removed after this long.
STALE_AFTER_S = 24 * 3600.0


def record_uri(folder: str, stage: str) -> str:
    return storage.join(folder, RECORD.format(stage=stage))


class StagedOutputs:
    """The outputs of one stage execution: staging URIs for ``run``, then one publish."""

    def __init__(self, stage: str, run_key: str, finals: Mapping[str, str]):
        self.stage, self.run_key, self.finals = stage, run_key, dict(finals)
        self.token = f"{stage}-{uuid.uuid4().hex[:12]}"
        self.folders = sorted({storage.parent(uri) for uri in self.finals.values()})
        self.staged = {name: storage.join(self._staging(storage.parent(uri)), storage.basename(uri))
                       for name, uri in self.finals.items()}
        self.created: list[Path] = []
        """Local output folders this execution created (removed again if it publishes nothing)."""

    def _staging(self, folder: str) -> str:
        return storage.join(folder, STAGING + self.token)

    def open(self) -> dict[str, str]:
        """Remove what killed attempts left, claim the staging folders; returns the staged URIs."""
        for folder in self.folders:
            if not storage.is_gcs(folder):
                path = Path(folder).absolute()
                self.created += [p for p in (path, *path.parents) if not p.exists()]
            try:
                self._sweep(folder)
                storage.write_json(storage.join(self._staging(folder), OWNER), {
                    **owner.record(), "run_key": self.run_key, "started": time.time()})
            except storage.StorageError as exc:  # named by the output folder, not the hidden staging one
                raise storage.StorageError(f"cannot write the outputs of {self.stage} to {folder}: "
                                           f"{exc.reason or exc}", exc.reason) from None
        return dict(self.staged)

    def unstage(self, text: str) -> str:
        """``text`` with every staging URI replaced by its final URI (for error messages)."""
        for name, staged in self.staged.items():
            text = text.replace(staged, self.finals[name])
        return text

    def publish(self, digests: Mapping[str, str]) -> None:
        """Move every staged output to its final URI, between the two states of the record."""
        missing = [name for name, uri in self.staged.items() if not storage.exists(uri)]
        if missing:
            raise RuntimeError(f"{self.stage}: run() returned without writing output(s) {missing}")
        for folder in self.folders:
            self._record(folder, "publishing", digests)
        for name, staged in self.staged.items():
            storage.move(staged, self.finals[name])
        for folder in self.folders:
            self._record(folder, "complete", digests)
        self.discard()

    def _record(self, folder: str, state: str, digests: Mapping[str, str]) -> None:
        storage.write_json(record_uri(folder, self.stage), {
            "stage": self.stage, "run_key": self.run_key, "state": state,
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "outputs": {name: {"file": storage.basename(uri), "digest": digests[name]}
                        for name, uri in self.finals.items() if storage.parent(uri) == folder}})

    def discard(self) -> None:
        """Remove the staging folders (what a failed ``run`` wrote never reaches the final URIs)."""
        for folder in self.folders:
            try:
                storage.delete(self._staging(folder))
            except storage.StorageError as exc:  # the stage's own error matters more
                log.warning("could not remove the staging folder %s: %s", self._staging(folder), exc)
        for folder in self.created:  # deepest first
            try:
                folder.rmdir()  # only while empty: nothing was published there
            except OSError:
                break

    def _sweep(self, folder: str) -> None:
        """Remove staging folders of earlier attempts of this stage whose owner is gone."""
        prefix = f"{STAGING}{self.stage}-"
        for name in _staging_folders(folder, prefix):
            staging = storage.join(folder, name)
            try:
                holder = storage.read_json(storage.join(staging, OWNER))
            except (storage.StorageError, ValueError):
                holder = {"started": _created(staging)}  # killed before it wrote one, or writing it now
            if _gone(holder):
                log.info("removing %s, left by an attempt of %s that was killed", staging, self.stage)
                storage.delete(staging)


def _staging_folders(folder: str, prefix: str) -> list[str]:
    if storage.is_gcs(folder):
        names = storage.list_files(folder) if storage.split_gcs(folder)[1] else []
        return sorted({n.split("/", 1)[0] for n in names if n.startswith(prefix) and "/" in n})
    path = Path(folder)
    return sorted(p.name for p in path.iterdir() if p.name.startswith(prefix)) if path.is_dir() else []


def _created(staging: str) -> float | None:
    """When a local staging folder was made (None on GCS, where a folder has no time of its own)."""
    return None if storage.is_gcs(staging) else Path(staging).stat().st_mtime


def _gone(holder: Mapping[str, Any]) -> bool:
    """Whether the attempt that owns a staging folder is over: its process on this host is gone,
    or it started more than :data:`STALE_AFTER_S` ago (a folder of unknown age is kept)."""
    started = holder.get("started")
    if not isinstance(started, (int, float)):
        return False
    return time.time() - started > STALE_AFTER_S or owner.gone(holder)


def published_digest(uri: str, producer: str, what: str) -> str | None:
    """The digest ``producer`` recorded for the artifact at ``uri`` when it published it; None
    when no record lists it. An artifact of an interrupted publish is refused."""
    record_at = record_uri(storage.parent(uri), producer)
    if not storage.exists(record_at):
        return None
    try:
        record = storage.read_json(record_at)
        entries = {entry["file"]: entry for entry in record["outputs"].values()}
        state = record["state"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"input {what}: {record_at} is not a publish record ({exc})") from None
    entry = entries.get(storage.basename(uri))
    if entry is None:
        return None
    if state != "complete":
        raise InputError(f"input {what}: {uri} belongs to an interrupted publish of {producer} (its record "
                         f"{record_at} says {state!r}: the stage was stopped while moving its outputs into "
                         f"place, so they may be a mix of two runs); run {producer} again")
    return entry["digest"]
