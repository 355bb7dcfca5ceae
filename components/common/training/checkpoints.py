"""Preemption-safe checkpoints in object storage.

Every ``checkpoint.every_steps`` optimizer steps the HF Trainer writes a checkpoint (weights,
optimizer, scheduler, RNG states, trainer state with the step counter) that is published to
``checkpoint.uri`` (local or ``gs://``). A checkpoint folder there is *complete* once its
``_MANIFEST.json`` exists (written last). A restarted stage downloads the last complete checkpoint
(and the best one, for ``load_best_model_at_end``) and resumes from it: same global step,
optimizer state, and data position (the Trainer skips the batches already seen). ``<uri>/job.json``
holds the job's fingerprint (config + input digests) so a checkpoint of another job is never
resumed by mistake, and ``<uri>/final`` the finished model, so a stage restarted after training
(e.g. while publishing) does not train again. Once the model is published the checkpoints are
deleted; ``final`` stays.

The main training process publishes on a background thread (:class:`CheckpointPublisher`,
``checkpoint.async_upload``): training goes on while a checkpoint uploads, and the next save waits
for it. Old checkpoints are deleted with the storage layer's retries; one that still cannot be
deleted is left behind with a warning (it costs storage, not the training run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from components.common import storage
from components.common.config import ConfigError
from components.common.storage import StorageError
from components.common.training.settings import TrainerSettings

log = logging.getLogger(__name__)

JOB_FILE, RESULT_FILE, FINAL = "job.json", "training_result.json", "final"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)/" + re.escape(storage.MANIFEST) + "$")


def checkpoint_uri(settings: TrainerSettings, cache_uri: str, stage: str, fingerprint: str) -> str:
    """The configured checkpoint URI, else ``<cache>/checkpoints/<stage>/<job>``: keyed by what the
    work is, so the same command re-run after a kill resumes it (in a pipeline retry or by hand),
    and a re-run of identical work reuses its finished model."""
    return settings.checkpoint.uri or storage.join(cache_uri, "checkpoints", stage, fingerprint[:16])


def job_fingerprint(section: BaseModel, inputs: Mapping[str, str], seed: int, code: str, cpu_kernels: str) -> str:
    """Digest of what a training job depends on: its config, its inputs' content digests, the
    seed, the code version and the CPU kernels (``run.cpu_kernels``: a reproducible run never
    resumes or reuses a native run's model)."""
    payload = json.dumps({"config": section.model_dump(mode="json"), "inputs": dict(sorted(inputs.items())),
                          "seed": seed, "code": code, "cpu_kernels": cpu_kernels}, sort_keys=True)
    return storage.bytes_digest(payload.encode()).split(":", 1)[1]


def complete(uri: str) -> list[int]:
    """Steps of the complete (manifest present) checkpoints published under ``uri``, ascending."""
    return sorted(int(m.group(1)) for f in storage.list_files(uri) if (m := _CHECKPOINT.match(f)))


def _publish_dir(local: Path, uri: str) -> None:
    if storage.is_gcs(uri):
        storage.upload_dir(local, uri)  # manifest written last
    else:
        storage.copy(str(local), uri)  # staged beside the target, manifest, then renamed


def _fetch_dir(uri: str, local: Path) -> None:
    if storage.is_gcs(uri):
        storage.download_dir(uri, local)
    else:
        shutil.copytree(uri, local)  # with its manifest: the copy's digest needs no second read


def _delete_dir(uri: str) -> bool:
    """Remove a published folder, its manifest first (so it is never seen complete with files
    missing), GCS errors retried by :mod:`storage`'s policy; True when it is gone. A folder that
    still cannot be deleted stays, with a warning: a leftover costs storage, not the run."""
    try:
        storage.delete(uri)
    except StorageError as exc:
        log.warning("could not delete %s; it stays until a later clean-up: %s", uri, exc)
        return False
    return True


def rotate(uri: str, keep: int, best_step: int | None) -> None:
    """Delete all but the ``keep`` newest (and the best) complete checkpoints under ``uri``."""
    try:
        steps = complete(uri)
    except StorageError as exc:
        log.warning("could not list the checkpoints of %s to delete old ones: %s", uri, exc)
        return
    keep_steps = set(steps[-keep:]) | ({best_step} if best_step else set())
    for old in steps:
        if old not in keep_steps:
            _delete_dir(storage.join(uri, f"checkpoint-{old}"))


def publish(local: Path, uri: str, step: int, keep: int, best_step: int | None) -> None:
    """Publish ``local`` as ``<uri>/checkpoint-<step>``, then :func:`rotate` the published ones."""
    start = time.monotonic()
    _publish_dir(local, storage.join(uri, f"checkpoint-{step}"))
    log.info("checkpoint %d published to %s in %.1fs", step, uri, time.monotonic() - start)
    rotate(uri, keep, best_step)


def drop_all(uri: str) -> bool:
    """Delete every published checkpoint under ``uri`` (``final`` and ``job.json`` stay); True
    when all of them are gone."""
    return all([_delete_dir(storage.join(uri, f"checkpoint-{step}")) for step in complete(uri)])


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


class CheckpointPublisher:
    """Publishes the checkpoints a training process saves, one at a time.

    In the background (``background=True``): :meth:`submit` takes a stable copy of the saved
    folder (hard links, no bytes copied: the Trainer's own ``save_total_limit`` rotation may delete
    the folder while it uploads) and returns once its upload has started on a worker thread; the
    next :meth:`submit` and :meth:`wait` wait for that upload and raise its error. Otherwise
    :meth:`submit` returns once the checkpoint is published. Either way an upload publishes the
    checkpoint before it rotates older ones away, and a checkpoint counts (:func:`complete`,
    :func:`restore`) only once its manifest, written last, exists: a run killed mid-upload resumes
    from the previous one.
    """

    def __init__(self, uri: str, keep: int, background: bool):
        self.uri, self.keep = uri, keep
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload") if background else None
        self._pending: tuple[int, Future] | None = None

    def submit(self, local: Path, step: int, best_step: int | None) -> None:
        """Publish the checkpoint saved at ``local``, once the previous one is published."""
        self.wait()
        if self._pool is None:
            publish(local, self.uri, step, self.keep, best_step)
            return
        stable = local.parent / ".uploading" / local.name
        shutil.rmtree(stable, ignore_errors=True)
        shutil.copytree(local, stable, copy_function=_link_or_copy)
        log.info("checkpoint %d: uploading to %s in the background", step, self.uri)
        self._pending = step, self._pool.submit(self._publish_copy, stable, step, best_step)

    def _publish_copy(self, stable: Path, step: int, best_step: int | None) -> None:
        try:
            publish(stable, self.uri, step, self.keep, best_step)
        finally:
            shutil.rmtree(stable, ignore_errors=True)

    def wait(self) -> None:
        """Wait for the upload in flight, if any; raises its error."""
        if self._pending is None:
            return
        (step, upload), self._pending = self._pending, None
        if not upload.done():
            start = time.monotonic()
            upload.exception()  # waits without raising, to log how long training was held
            log.info("waited %.1fs for checkpoint %d's upload", time.monotonic() - start, step)
        upload.result()


def claim(uri: str, fingerprint: str, stage: str) -> None:
    """Record (or check) which job the checkpoints under ``uri`` belong to, and when it last ran
    (what :func:`prune_jobs` keeps by)."""
    marker = storage.join(uri, JOB_FILE)
    if storage.exists(marker):
        found = storage.read_json(marker)
        if found.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{stage}.checkpoint.uri: {uri} holds checkpoints of another job (config or inputs differ: "
                f"fingerprint {found.get('fingerprint')} != {fingerprint}); point checkpoint.uri elsewhere "
                "or delete that folder")
    storage.write_json(marker, {"fingerprint": fingerprint, "stage": stage, "claimed_at": time.time()})


def restore(uri: str, output_dir: Path) -> Path | None:
    """Download the last complete checkpoint under ``uri`` (and the best one, if it differs and
    still exists) into ``output_dir``; returns the local checkpoint to resume from, or None."""
    steps = complete(uri)
    if not steps:
        return None
    latest = steps[-1]
    local = output_dir / f"checkpoint-{latest}"
    _fetch_dir(storage.join(uri, f"checkpoint-{latest}"), local)
    state_file = local / "trainer_state.json"
    state = json.loads(state_file.read_text())
    best = state.get("best_global_step")
    if best and best != latest and best in steps:
        _fetch_dir(storage.join(uri, f"checkpoint-{best}"), output_dir / f"checkpoint-{best}")
    if best in steps:  # the recorded path was on the machine that wrote it
        state["best_model_checkpoint"] = str(output_dir / f"checkpoint-{best}")
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
    log.info("resuming from checkpoint %d of %s", latest, uri)
    return local


def publish_final(local: Path, uri: str) -> None:
    """Keep the finished model next to the checkpoints, so a restart after training skips it."""
    _publish_dir(local, storage.join(uri, FINAL))


def prune_jobs(stage_root: str, keep: int) -> list[str]:
    """Delete all but the ``keep`` most recently run jobs under ``stage_root`` (their checkpoints
    and finished models); returns the job folders deleted."""
    jobs = []
    for name in sorted({f.split("/", 1)[0] for f in storage.list_files(stage_root) if "/" in f}):
        marker = storage.join(stage_root, name, JOB_FILE)
        claimed = storage.read_json(marker).get("claimed_at", 0) if storage.exists(marker) else 0
        jobs.append((claimed, name))
    deleted = []
    for _, name in sorted(jobs, reverse=True)[keep:]:
        job = storage.join(stage_root, name)
        # checkpoints, then the finished model, each manifest first: never seen complete; the job
        # folder only once they are gone (else a later prune tries again)
        if drop_all(job) and _delete_dir(storage.join(job, FINAL)) and _delete_dir(job):
            deleted.append(job)
    if deleted:
        log.info("checkpoint cache %s: removed %d older job(s), kept %d", stage_root, len(deleted), keep)
    return deleted


def fetch_final(uri: str, local: Path) -> bool:
    """Download ``<uri>/final`` if a complete one exists; True when it did."""
    final = storage.join(uri, FINAL)
    if not storage.exists(storage.join(final, storage.MANIFEST)):
        return False
    _fetch_dir(final, local)
    return True


def work_dir(settings: TrainerSettings, stage: str, fingerprint: str) -> Path:
    """A fresh local work folder for one job (same path for the same job, so a resumed state's
    checkpoint paths stay valid)."""
    root = Path(settings.checkpoint.local_dir or Path(tempfile.gettempdir()) / "sidreasoner-train")
    path = root / f"{stage}-{fingerprint[:16]}"
    shutil.rmtree(path, ignore_errors=True)  # restarts resume from object storage, never from leftovers
    path.mkdir(parents=True)
    return path
