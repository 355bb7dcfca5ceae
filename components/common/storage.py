"""Read and write artifacts by URI: local paths and ``gs://bucket/key`` (google-cloud-storage).

Guarantees, for every writer here:

* **Atomic.** Nothing is visible at the final URI until it is complete. Local files and folders
  are built beside the target and renamed into place. A GCS object only becomes visible when its
  upload finalises. A GCS *folder* (checkpoint, model) is complete only once its
  ``_MANIFEST.json`` (written last, listing every file with its digest) exists; readers refuse a
  folder without one.
* **The old version stays readable.** Replacing a local folder swaps the new one in with one
  ``renameat2(RENAME_EXCHANGE)`` (two renames where the file system lacks it). Replacing a
  complete GCS folder first moves the old version's files aside (server-side copies under
  ``_previous/``) and points its manifest at them, then uploads the new files and replaces the
  manifest: a reader going through the manifest sees the old version or the new one, never a
  mix, and never a folder without a manifest. Every manifest replacement is conditional on the
  generation it replaces (``if_generation_match``), so two writers racing on one folder cannot
  interleave: the second fails naming the URI (a real GCS enforces this; the emulator does not,
  see STACK.md, and tests put a precondition-enforcing proxy in front of it).
* **Retried, bounded, named.** Transient GCS errors (429, 5xx, connection resets, timeouts) are
  retried with exponential back-off (google-api-core's retry policy, uploads included) for at
  most ``SIDREASONER_GCS_RETRY_DEADLINE`` seconds (default 300), each request waiting at most
  ``SIDREASONER_GCS_TIMEOUT`` seconds (default 60); a stage takes both from the profile's
  ``storage.gcs_retry_deadline_s`` / ``storage.gcs_timeout_s`` (:func:`configure`). Every
  failure, local or GCS, is a :class:`StorageError` naming the URI and the cause (no space left,
  permission denied, the retry deadline passed).
* **Digested.** Writers return a content digest (``sha256:<hex>``) that is identical for the
  same bytes, wherever they are stored; MLflow lineage records it. A folder is hashed once:
  its manifest records each file's digest, size and (locally) modification time, and
  :func:`digest` trusts a manifest whose files still match it (written by our writer, or
  verified on download) instead of re-reading every file (:func:`dir_digest` always re-hashes).

Parquet is read and written through a local staging copy: pyarrow's native GCS filesystem
hangs on random-access reads against the emulator (see STACK.md), and staging keeps one code
path for both backends.

Conditional writes (:func:`read_versioned`, :func:`write_if`, :func:`delete_if`) give small
objects compare-and-swap semantics on both backends (GCS generations; a file lock locally), for
leases shared by processes and machines (the teacher's response cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.common.errors import ExpectedError

GCS_PREFIX = "gs://"
MANIFEST = "_MANIFEST.json"
#: Where a GCS folder's previous version waits while a new one is uploaded.
PREVIOUS = "_previous"
_CHUNK = 1 << 20

#: Environment variables holding the GCS defaults of a process (seconds).
ENV_RETRY_DEADLINE = "SIDREASONER_GCS_RETRY_DEADLINE"
ENV_TIMEOUT = "SIDREASONER_GCS_TIMEOUT"


class StorageError(ExpectedError, RuntimeError):
    """An artifact is missing, incomplete or could not be transferred; the message names its URI
    and ``reason`` (when known) says why without it (no space left on device, ...)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class ArtifactNotFound(StorageError):
    """Nothing is stored at the URI (the message names it)."""


# ----------------------------------------------------------------------------------------------
# URIs
# ----------------------------------------------------------------------------------------------


def is_gcs(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(GCS_PREFIX)


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or gs:// URI."""
    base = str(uri)
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def parent(uri: str | os.PathLike) -> str:
    """The folder holding ``uri`` (local path or gs:// prefix)."""
    uri = str(uri)
    if is_gcs(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).parent)


def basename(uri: str | os.PathLike) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1] if is_gcs(uri) else Path(uri).name


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri}")
    bucket, _, name = uri[len(GCS_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri}")
    return bucket, name.rstrip("/")


# ----------------------------------------------------------------------------------------------
# GCS client, retry policy and errors
# ----------------------------------------------------------------------------------------------


@functools.cache
def gcs_client():
    """A google-cloud-storage client; anonymous against ``STORAGE_EMULATOR_HOST`` if set."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-emulator")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


_settings: dict[str, float | None] = {"deadline": None, "timeout": None}


def configure(retry_deadline_s: float | None = None, timeout_s: float | None = None) -> None:
    """Set this process's GCS retry deadline and per-request timeout (a stage calls this with
    its profile's ``storage`` settings); None keeps the environment's value or the default."""
    _settings.update(deadline=retry_deadline_s, timeout=timeout_s)


def retry_deadline() -> float:
    """Seconds a GCS call is retried for, at most."""
    return _settings["deadline"] or float(os.environ.get(ENV_RETRY_DEADLINE, "300"))


def request_timeout() -> float:
    """Seconds one GCS request may take."""
    return _settings["timeout"] or float(os.environ.get(ENV_TIMEOUT, "60"))


def _retry():
    """Retry policy for every GCS call, uploads included (our uploads are idempotent: the same
    bytes to the same name; conditional ones fail cleanly on a repeat)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(retry_deadline()).with_delay(initial=0.5, multiplier=2.0, maximum=30.0)


def _io() -> dict[str, Any]:
    """The retry and timeout keyword arguments of every google-cloud-storage call."""
    return {"retry": _retry(), "timeout": request_timeout()}


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def _cause(exc: BaseException) -> str:
    """What went wrong, in one line, without google's wrapping."""
    from google.api_core.exceptions import RetryError

    if isinstance(exc, RetryError) and exc.cause is not None:
        return (f"gave up after retrying for {retry_deadline():.0f}s ({ENV_RETRY_DEADLINE} / "
                f"storage.gcs_retry_deadline_s); last error: {_cause(exc.cause)}")
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _is_transport_error(exc: BaseException) -> bool:
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from requests import RequestException  # google-cloud-storage's transport

    return isinstance(exc, (GoogleAPIError, GoogleAuthError, RequestException, ConnectionError, TimeoutError))


@contextlib.contextmanager
def _gcs(action: str, uri: str) -> Iterator[None]:
    """Translate google's errors into a :class:`StorageError` naming ``uri`` and the cause."""
    from google.api_core.exceptions import Forbidden, NotFound, PreconditionFailed

    try:
        yield
    except (StorageError, PreconditionFailed):
        raise  # already named; a failed precondition is an answer the caller handles
    except NotFound:
        raise ArtifactNotFound(f"artifact not found: {uri}") from None
    except Forbidden as exc:
        raise StorageError(f"cannot {action} {uri}: permission denied ({_cause(exc)})") from None
    except Exception as exc:
        if not _is_transport_error(exc):
            raise
        raise StorageError(f"cannot {action} {uri}: {_cause(exc)}") from exc


def _local_error(action: str, uri: str | os.PathLike, exc: OSError) -> StorageError:
    """A local file-system failure as a :class:`StorageError` naming the URI and the cause."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system", errno.EIO: "input/output error"}
    reason = reasons.get(exc.errno) or " ".join(str(exc).split())[:300] or type(exc).__name__
    where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) != str(uri) else ""
    return StorageError(f"cannot {action} {uri}: {reason}{where}", reason)


# ----------------------------------------------------------------------------------------------
# Digests and manifests
# ----------------------------------------------------------------------------------------------


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def bytes_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dir_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)).replace(os.sep, "/")
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


def _listing_digest(files: dict[str, dict[str, Any]]) -> str:
    """A folder's digest: a hash over every file's relative path and content digest."""
    return bytes_digest("\n".join(f"{rel} {files[rel]['digest']}" for rel in sorted(files)).encode())


def _manifest(root: Path) -> dict[str, Any]:
    """Hash every file of a local folder (the one full read)."""
    files = {}
    for rel in _dir_files(root):
        stat = (root / rel).stat()
        files[rel] = {"digest": file_digest(root / rel), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"digest": _listing_digest(files), "files": files}


def _trusted_manifest(root: Path) -> dict[str, Any] | None:
    """The folder's manifest when its files are still the ones it lists (same names, sizes and
    modification times, and a digest consistent with the listing); None otherwise. A change that
    keeps a file's size and restores its modification time is not seen, as with make or rsync."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
        if set(files) != set(_dir_files(root)) or _listing_digest(files) != manifest["digest"]:
            return None
        for rel, meta in files.items():
            stat = (root / rel).stat()
            if stat.st_size != meta["size"] or stat.st_mtime_ns != meta.get("mtime_ns"):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _write_local_manifest(root: Path) -> dict[str, Any]:
    """Keep a manifest the folder's files still match (copied along with them); else hash."""
    manifest = _trusted_manifest(root) or _manifest(root)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def dir_digest(path: str | os.PathLike) -> str:
    """Digest of a local folder, re-hashing every file (see :func:`digest` for the cheap way)."""
    return _manifest(Path(path))["digest"]


def digest(uri: str | os.PathLike) -> str:
    """Content digest of a file or folder artifact, local or on GCS. A folder's verified
    manifest is trusted; files are hashed."""
    uri = str(uri)
    if is_gcs(uri):
        if _gcs_exists(uri):
            return bytes_digest(read_bytes(uri))
        return _read_gcs_manifest(uri)[0]["digest"]
    path = Path(uri)
    try:
        if path.is_dir():
            trusted = _trusted_manifest(path)
            return trusted["digest"] if trusted else dir_digest(path)
        if path.is_file():
            return file_digest(path)
    except OSError as exc:
        raise _local_error("read", uri, exc) from None
    raise ArtifactNotFound(f"artifact not found: {uri}")


# ----------------------------------------------------------------------------------------------
# Existence, listing
# ----------------------------------------------------------------------------------------------


def _gcs_exists(uri: str) -> bool:
    with _gcs("check", uri):
        return _blob(uri).exists(**_io())


def exists(uri: str | os.PathLike) -> bool:
    """True for an existing file, or a *complete* folder (GCS: manifest present)."""
    uri = str(uri)
    if is_gcs(uri):
        return _gcs_exists(uri) or _gcs_exists(join(uri, MANIFEST))
    return Path(uri).exists()


def is_dir(uri: str | os.PathLike) -> bool:
    """True for a folder artifact (on GCS: a complete one, its manifest present)."""
    uri = str(uri)
    if is_gcs(uri):
        return _gcs_exists(join(uri, MANIFEST))
    return Path(uri).is_dir()


def _gcs_objects(uri: str) -> list[Any]:
    bucket, prefix = split_gcs(uri)
    prefix = prefix + "/" if prefix else ""
    with _gcs("list", uri):
        return [b for b in gcs_client().list_blobs(bucket, prefix=prefix, **_io()) if not b.name.endswith("/")]


def list_files(uri: str | os.PathLike) -> list[str]:
    """Relative paths of all files under a folder (local or GCS prefix), sorted."""
    uri = str(uri)
    if is_gcs(uri):
        prefix = split_gcs(uri)[1]
        skip = len(prefix) + 1 if prefix else 0
        return sorted(b.name[skip:] for b in _gcs_objects(uri))
    files = []
    # os.walk skips a folder that a concurrent writer renames or removes meanwhile (a staged
    # checkpoint moving into place), where Path.rglob would raise FileNotFoundError
    for folder, _, names in os.walk(uri):
        files += [os.path.relpath(os.path.join(folder, name), uri).replace(os.sep, "/") for name in names]
    return sorted(files)


# ----------------------------------------------------------------------------------------------
# Bytes, text, JSON
# ----------------------------------------------------------------------------------------------


def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if is_gcs(uri):
        with _gcs("read", uri):
            return _blob(uri).download_as_bytes(**_io())
    path = Path(uri)
    if not path.is_file():
        raise ArtifactNotFound(f"artifact not found: {uri}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _local_error("read", uri, exc) from None


def write_bytes(uri: str | os.PathLike, data: bytes) -> str:
    """Write bytes atomically; returns their digest."""
    with staged_file(uri) as tmp:
        tmp.write_bytes(data)
    return bytes_digest(data)


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str | os.PathLike, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str | os.PathLike) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str | os.PathLike, obj: Any) -> str:
    return write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def delete(uri: str | os.PathLike) -> None:
    """Remove a file or folder artifact (nothing when absent)."""
    uri = str(uri)
    if is_gcs(uri):
        bucket_name, prefix = split_gcs(uri)
        with _gcs("delete", uri):
            if _blob(uri).exists(**_io()):
                _blob(uri).delete(**_io())
                return
        # a folder: the manifest goes first, so it is never seen complete with files missing
        objects = sorted(_gcs_objects(uri), key=lambda b: b.name != f"{prefix}/{MANIFEST}")
        with _gcs("delete", uri):
            for blob in objects:
                with contextlib.suppress(_not_found()):
                    blob.delete(**_io())
        return
    path = Path(uri)
    try:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    except OSError as exc:
        raise _local_error("delete", uri, exc) from None


def _not_found() -> type[Exception]:
    from google.api_core.exceptions import NotFound

    return NotFound


# ----------------------------------------------------------------------------------------------
# Atomic staging of outputs
# ----------------------------------------------------------------------------------------------


def _sibling_tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def _writing(uri: str | os.PathLike) -> Iterator[None]:
    """Local write failures (full disk, permission denied, read-only) named by the target URI."""
    try:
        yield
    except OSError as exc:
        raise _local_error("write", uri, exc) from None


@contextlib.contextmanager
def _gcs_staging(uri: str, upload: Callable[[Path], object]) -> Iterator[Path]:
    """A local temp folder for an output bound for ``uri`` in GCS; when the caller's block
    succeeds, ``upload(folder)`` publishes it (the folder is removed either way)."""
    with tempfile.TemporaryDirectory(prefix="sidreasoner-stage-") as tmpdir:
        with _writing(uri):
            yield Path(tmpdir)
        upload(Path(tmpdir))


@contextlib.contextmanager
def staged_file(uri: str | os.PathLike) -> Iterator[Path]:
    """Yield a local temp path; on success it is published at ``uri`` in one step.

    On an exception nothing is published and the temp file is removed.
    """
    uri = str(uri)
    if is_gcs(uri):
        with _gcs_staging(uri, lambda folder: upload_file(folder / "payload", uri)) as folder:
            yield folder / "payload"
        return
    target = Path(uri)
    with _writing(uri):
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_tmp(target)
    try:
        with _writing(uri):
            yield tmp
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty local temp folder; on success it replaces the folder at ``uri``.

    Local: manifest written, then swapped into place (the previous folder stays whole until the
    swap, then is removed). GCS: uploaded in parallel, manifest last (:func:`upload_dir`).
    """
    uri = str(uri)
    if is_gcs(uri):
        with _gcs_staging(uri, lambda folder: upload_dir(folder, uri)) as folder:
            yield folder
        return
    target = Path(uri)
    with _writing(uri):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling_tmp(target)
        tmp.mkdir()
    try:
        with _writing(uri):
            yield tmp
            _write_local_manifest(tmp)
            replace_path(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2``); False where unsupported."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False  # the file system cannot exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def replace_path(new: Path, target: Path) -> None:
    """Put the file or folder ``new`` at ``target`` (same file system), replacing what is there.

    A folder is exchanged with the old one in one step where the file system can, so a reader
    never finds ``target`` missing; the old version is then removed."""
    if not target.exists() or (new.is_file() and not target.is_dir()):
        os.replace(new, target)
        return
    if _exchange(new, target):
        old = new  # the exchange left the old version at the new one's path
    else:
        old = _sibling_tmp(target)
        os.replace(target, old)
        os.replace(new, target)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


# ----------------------------------------------------------------------------------------------
# Files and folders across backends
# ----------------------------------------------------------------------------------------------


def upload_file(local: str | os.PathLike, uri: str) -> None:
    if not is_gcs(uri):
        raise ValueError(f"upload_file needs a gs:// URI, got {uri}")
    with _gcs("upload to", uri):
        _blob(uri).upload_from_filename(str(local), **_io())


def _gcs_manifest_entries(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest as stored on GCS: digests and sizes (local modification times mean nothing there)."""
    return {"digest": manifest["digest"],
            "files": {rel: {"digest": m["digest"], "size": m["size"]} for rel, m in manifest["files"].items()}}


def _object_of(rel: str, meta: dict[str, Any]) -> str:
    """Name (under the folder's prefix) of the object holding file ``rel``."""
    return meta.get("object", rel)


_RACE = "another writer is replacing this folder at the same time; this upload was not published"


def _write_gcs_manifest(uri: str, manifest: dict[str, Any], generation: int) -> int:
    """Replace the folder's manifest if it is still at ``generation`` (0: absent); returns the new
    generation. A real GCS refuses the write when another writer got there first."""
    from google.api_core.exceptions import PreconditionFailed

    blob = _blob(join(uri, MANIFEST))
    try:
        with _gcs("write the manifest of", uri):
            blob.upload_from_string(json.dumps(manifest, indent=1, sort_keys=True), content_type="application/json",
                                    if_generation_match=generation, **_io())
    except PreconditionFailed:
        raise StorageError(f"{uri}: {_RACE} (its manifest changed)") from None
    return blob.generation


def _parallel(action: str, uri: str, calls: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run the GCS ``calls`` on ``workers`` threads; the first failure is raised, named."""
    from concurrent.futures import ThreadPoolExecutor

    from google.api_core.exceptions import PreconditionFailed

    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(calls)))) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            with _gcs(action, uri):
                return [future.result() for future in futures]
        except PreconditionFailed:
            raise StorageError(f"{uri}: {_RACE} (a file changed under this upload)") from None
        finally:
            for future in futures:
                future.cancel()


def _retire_previous(uri: str, manifest: dict[str, Any], generation: int, snapshot: dict[str, int],
                     workers: int) -> tuple[int, dict[str, int]]:
    """Copy the files of the folder's current version that sit at their plain names under
    ``_previous/<token>/`` (server-side) and point the manifest at the copies, so the version
    stays readable while new files are uploaded over the plain names. Returns the manifest's new
    generation and the copies made (name -> generation)."""
    bucket_name, prefix = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    token = uuid.uuid4().hex[:12]
    plain = [rel for rel, meta in manifest["files"].items() if _object_of(rel, meta) == rel]
    if not plain:
        return generation, {}  # already aside (an upload before this one was interrupted)

    def aside(rel: str) -> tuple[str, int]:
        name = f"{prefix}/{rel}"
        copied = bucket.copy_blob(bucket.blob(name), bucket, f"{prefix}/{PREVIOUS}/{token}/{rel}",
                                  if_generation_match=0, if_source_generation_match=snapshot.get(name), **_io())
        return copied.name, copied.generation

    copies = dict(_parallel("keep the previous version of", uri, [functools.partial(aside, rel) for rel in plain],
                            workers))
    files = {rel: ({**meta, "object": f"{PREVIOUS}/{token}/{rel}"} if rel in plain else meta)
             for rel, meta in manifest["files"].items()}
    return _write_gcs_manifest(uri, {**manifest, "files": files}, generation), copies


def _commit_folder(uri: str, manifest: dict[str, Any], put: Callable[[str, Any, int], Any], workers: int) -> None:
    """Publish a folder version on GCS.

    1. Note the folder's manifest and every object under it with its generation.
    2. Retire the current version (kept readable through the manifest, :func:`_retire_previous`).
    3. ``put(rel, blob, if_generation_match)`` each new file at its plain name, conditional on
       the generation noted: a writer racing on the same folder fails here or at 4, never
       overwriting a file the other one published.
    4. Replace the manifest, conditional on its generation.
    5. Delete what was noted or set aside and is not used now, each conditional on its
       generation (a racing writer's newer objects stay).
    """
    from google.api_core.exceptions import NotFound, PreconditionFailed

    bucket_name, prefix = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    current, generation = _read_gcs_manifest_if_any(uri)
    snapshot = {blob.name: blob.generation for blob in _gcs_objects(uri)}
    copies: dict[str, int] = {}
    if current is not None:
        generation, copies = _retire_previous(uri, current, generation, snapshot, workers)
    names = {rel: f"{prefix}/{rel}" for rel in manifest["files"]}
    _parallel("write", uri, [functools.partial(put, rel, bucket.blob(name), snapshot.get(name, 0))
                             for rel, name in names.items()], workers)
    _write_gcs_manifest(uri, manifest, generation)
    used = {f"{prefix}/{MANIFEST}", *names.values()}
    with _gcs("clean up", uri):
        for name, noted in {**snapshot, **copies}.items():
            if name not in used:
                with contextlib.suppress(NotFound, PreconditionFailed):
                    bucket.blob(name).delete(if_generation_match=noted, **_io())


def upload_dir(local: str | os.PathLike, uri: str, workers: int = 8) -> str:
    """Upload a folder to a GCS prefix in parallel, manifest last; returns the folder digest.

    Replacing a complete folder keeps its old version readable until the new manifest is
    written, and a writer racing on the same folder fails instead of mixing the two
    (:func:`_commit_folder`).
    """
    root = Path(local)
    manifest = _gcs_manifest_entries(_trusted_manifest(root) or _manifest(root))

    def put(rel: str, blob: Any, generation: int) -> None:
        blob.upload_from_filename(str(root / rel), if_generation_match=generation, **_io())

    _commit_folder(uri, manifest, put, workers)
    return manifest["digest"]


def move(src: str | os.PathLike, dst: str | os.PathLike, workers: int = 8) -> None:
    """Move a file or folder artifact to ``dst`` on the same backend (publishing a staged
    output). Locally a rename (a folder is swapped in, :func:`replace_path`); on GCS server-side
    copies, a folder's old version kept readable until its new manifest is written."""
    src, dst = str(src), str(dst)
    if is_gcs(src) != is_gcs(dst):
        raise ValueError(f"move needs two URIs on the same backend: {src} -> {dst}")
    if not is_gcs(src):
        with _writing(dst):
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            replace_path(Path(src), Path(dst))
        return
    if _gcs_exists(src):
        bucket = gcs_client().bucket(split_gcs(dst)[0])
        with _gcs("move to", dst):
            bucket.copy_blob(_blob(src), bucket, split_gcs(dst)[1], **_io())
        delete(src)
        return
    manifest, _ = _read_gcs_manifest(src)

    def put(rel: str, blob: Any, generation: int) -> None:
        source = _blob(join(src, _object_of(rel, manifest["files"][rel])))
        source.bucket.copy_blob(source, blob.bucket, blob.name, if_generation_match=generation, **_io())

    _commit_folder(dst, _gcs_manifest_entries(manifest), put, workers)
    delete(src)


def _raise_first(results: list[Any], uri: str, action: str) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise StorageError(f"cannot {action} {uri}: {_cause(result)}") from result


def _read_gcs_manifest_if_any(uri: str) -> tuple[dict[str, Any] | None, int]:
    """(manifest, generation) of a GCS folder; (None, 0) when it has none."""
    blob = _blob(join(uri, MANIFEST))
    with _gcs("read the manifest of", uri):
        try:
            blob.reload(**_io())
        except _not_found():
            return None, 0
        generation = blob.generation
        data = blob.download_as_bytes(if_generation_match=generation, **_io())
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{join(uri, MANIFEST)}: not a manifest ({exc})") from None
    return manifest, generation


def _read_gcs_manifest(uri: str) -> tuple[dict[str, Any], int]:
    manifest, generation = _read_gcs_manifest_if_any(uri)
    if manifest is None:
        raise StorageError(
            f"folder artifact {uri} is missing or incomplete (no {MANIFEST}; an upload was "
            "interrupted or never happened)"
        )
    return manifest, generation


def download_dir(uri: str, local: str | os.PathLike, workers: int = 8) -> Path:
    """Download a complete GCS folder (verified against its manifest) into ``local``; the
    verified manifest is kept there, so the copy's digest costs no second read."""
    root = Path(local)
    for attempt in range(2):
        manifest, generation = _read_gcs_manifest(uri)
        try:
            _download_files(uri, manifest, root, workers)
            break
        except StorageError:
            # a writer replaced the folder during the download (its old files are deleted
            # once the new manifest is in place): read the new version, once
            if attempt or _read_gcs_manifest(uri)[1] == generation:
                raise
    for rel, meta in manifest["files"].items():
        if file_digest(root / rel) != meta["digest"]:
            raise StorageError(f"{uri}/{rel}: digest mismatch after download")
    with _writing(root):
        files = {rel: {"digest": meta["digest"], "size": meta["size"], "mtime_ns": (root / rel).stat().st_mtime_ns}
                 for rel, meta in manifest["files"].items()}
        (root / MANIFEST).write_text(json.dumps({"digest": manifest["digest"], "files": files},
                                                indent=1, sort_keys=True))
    return root


def _download_files(uri: str, manifest: dict[str, Any], root: Path, workers: int) -> None:
    from google.cloud.storage import transfer_manager

    bucket_name, prefix = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    pairs = []
    with _writing(root):
        root.mkdir(parents=True, exist_ok=True)
        for rel, meta in manifest["files"].items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pairs.append((bucket.blob(f"{prefix}/{_object_of(rel, meta)}"), str(root / rel)))
    if pairs:
        with _gcs("download", uri):
            results = transfer_manager.download_many(
                pairs, download_kwargs=_io(), max_workers=workers, worker_type=transfer_manager.THREAD,
                raise_exception=True,
            )
        _raise_first(results, uri, "download")


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local path for a file or folder artifact (downloaded to a temp dir for gs://)."""
    uri = str(uri)
    if not is_gcs(uri):
        path = Path(uri)
        if not path.exists():
            raise ArtifactNotFound(f"artifact not found: {uri}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sidreasoner-in-") as tmpdir:
        if _gcs_exists(uri):
            path = Path(tmpdir) / basename(uri)
            with _gcs("download", uri):
                _blob(uri).download_to_filename(str(path), **_io())
            yield path
        else:
            yield download_dir(uri, Path(tmpdir) / "dir")


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy a file or folder artifact between any two URIs; returns the digest. A folder's
    verified manifest travels with it (no file is hashed again)."""
    with local_copy(src) as path:
        if path.is_dir():
            trusted = _trusted_manifest(path) is not None
            with staged_dir(dst) as tmp:
                # copy2 keeps modification times, so a trusted manifest still matches the copies
                shutil.copytree(path, tmp, dirs_exist_ok=True,
                                ignore=None if trusted else shutil.ignore_patterns(MANIFEST))
            return digest(dst)
        with staged_file(dst) as tmp:
            shutil.copyfile(path, tmp)
        return file_digest(path)


# ----------------------------------------------------------------------------------------------
# Conditional writes (compare-and-swap on small objects)
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a local folder's ``.cas.lock`` (released by the kernel if the holder
    dies; POSIX locks over NFS too)."""
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".cas.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _local_version(path: Path) -> tuple[bytes, str] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data, bytes_digest(data)


def read_versioned(uri: str | os.PathLike) -> tuple[bytes, str] | None:
    """(content, version) of a small object, None when absent. The version changes with every
    write (GCS: the generation; locally: the content digest)."""
    uri = str(uri)
    if not is_gcs(uri):
        try:
            return _local_version(Path(uri))
        except OSError as exc:
            raise _local_error("read", uri, exc) from None
    from google.api_core.exceptions import PreconditionFailed

    while True:
        blob = _blob(uri)
        with _gcs("read", uri):
            try:
                blob.reload(**_io())
                generation = blob.generation
                return blob.download_as_bytes(if_generation_match=generation, **_io()), str(generation)
            except _not_found():
                return None
            except PreconditionFailed:
                continue  # replaced between the two calls: read the new one


def write_if(uri: str | os.PathLike, data: bytes, version: str | None) -> str | None:
    """Write ``data`` only if the object is still at ``version`` (None: only if absent); returns
    the new version, or None when another writer changed it first."""
    uri = str(uri)
    if not is_gcs(uri):
        path = Path(uri)
        with _folder_lock(path.parent), _writing(uri):
            current = _local_version(path)
            if (current[1] if current else None) != version:
                return None
            tmp = _sibling_tmp(path)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return bytes_digest(data)
    from google.api_core.exceptions import PreconditionFailed

    blob = _blob(uri)
    try:
        with _gcs("write", uri):
            blob.upload_from_string(data, if_generation_match=int(version) if version else 0, **_io())
    except PreconditionFailed:
        return None
    return str(blob.generation)


def delete_if(uri: str | os.PathLike, version: str) -> bool:
    """Delete the object only if it is still at ``version``; True when deleted."""
    uri = str(uri)
    if not is_gcs(uri):
        path = Path(uri)
        with _folder_lock(path.parent), _writing(uri):
            current = _local_version(path)
            if current is None or current[1] != version:
                return False
            path.unlink()
        return True
    from google.api_core.exceptions import NotFound, PreconditionFailed

    with _gcs("delete", uri):
        try:
            _blob(uri).delete(if_generation_match=int(version), **_io())
        except (PreconditionFailed, NotFound):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Parquet
# ----------------------------------------------------------------------------------------------


def read_parquet(uri: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    with local_copy(uri) as path:
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"{uri}: not a readable Parquet file: {exc}") from exc


def read_parquet_schema(uri: str | os.PathLike) -> pa.Schema:
    """The schema (with its metadata) of a Parquet artifact, without reading its rows."""
    with local_copy(uri) as path:
        try:
            return pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"{uri}: not a readable Parquet file: {exc}") from exc


def write_parquet(table: pa.Table, uri: str | os.PathLike) -> str:
    """Write a table atomically (zstd); returns the file digest."""
    with staged_file(uri) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        result = file_digest(tmp)
    return result
