"""Read and write artifacts by URI: local paths and ``gs://bucket/key`` (google-cloud-storage).

Guarantees, for every writer here:

* **Atomic.** Nothing is visible at the final URI until it is complete. Local files and folders
  are built beside the target and renamed into place. A GCS object only becomes visible when its
  upload finalises. A GCS *folder* (checkpoint, model) is complete only once its
  ``_MANIFEST.json`` (written last, listing every file with its digest) exists; readers refuse a
  folder without one.
* **Retried.** Transient GCS errors (429, 5xx, connection resets, timeouts) are retried with
  exponential back-off (google-api-core's retry policy, applied to uploads too).
* **Digested.** Writers return a content digest (``sha256:<hex>``) that is identical for the
  same bytes, wherever they are stored; MLflow lineage records it.

Parquet is read and written through a local staging copy: pyarrow's native GCS filesystem
hangs on random-access reads against the emulator (see STACK.md), and staging keeps one code
path for both backends.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.common.errors import ExpectedError

GCS_PREFIX = "gs://"
MANIFEST = "_MANIFEST.json"
_CHUNK = 1 << 20


class StorageError(ExpectedError, RuntimeError):
    """An artifact is missing, incomplete or could not be transferred."""


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


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri}")
    bucket, _, name = uri[len(GCS_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri}")
    return bucket, name.rstrip("/")


# ----------------------------------------------------------------------------------------------
# GCS client and retry policy
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


def _retry():
    """Retry policy for every GCS call, uploads included (our uploads are idempotent: the same
    bytes to the same name)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    deadline = float(os.environ.get("SIDREASONER_GCS_RETRY_DEADLINE", "300"))
    return DEFAULT_RETRY.with_timeout(deadline).with_delay(initial=0.5, multiplier=2.0, maximum=30.0)


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


# ----------------------------------------------------------------------------------------------
# Digests
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


def _manifest(root: Path) -> dict[str, Any]:
    files = {rel: {"digest": file_digest(root / rel), "size": (root / rel).stat().st_size}
             for rel in _dir_files(root)}
    listing = "\n".join(f"{rel} {meta['digest']}" for rel, meta in files.items())
    return {"digest": bytes_digest(listing.encode()), "files": files}


def dir_digest(path: str | os.PathLike) -> str:
    """Digest of a folder: a hash over every file's relative path and content digest."""
    return _manifest(Path(path))["digest"]


def digest(uri: str | os.PathLike) -> str:
    """Content digest of a file or folder artifact, local or on GCS."""
    uri = str(uri)
    if is_gcs(uri):
        if _gcs_exists(uri):
            return bytes_digest(read_bytes(uri))
        return _read_gcs_manifest(uri)["digest"]
    path = Path(uri)
    if path.is_dir():
        return dir_digest(path)
    if path.is_file():
        return file_digest(path)
    raise StorageError(f"artifact not found: {uri}")


# ----------------------------------------------------------------------------------------------
# Existence, listing
# ----------------------------------------------------------------------------------------------


def _gcs_exists(uri: str) -> bool:
    return _blob(uri).exists(retry=_retry())


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


def list_files(uri: str | os.PathLike) -> list[str]:
    """Relative paths of all files under a folder (local or GCS prefix), sorted."""
    uri = str(uri)
    if is_gcs(uri):
        bucket, prefix = split_gcs(uri)
        prefix = prefix + "/" if prefix else ""
        blobs = gcs_client().list_blobs(bucket, prefix=prefix, retry=_retry())
        return sorted(b.name[len(prefix) :] for b in blobs if not b.name.endswith("/"))
    root = Path(uri)
    return sorted(str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# Bytes, text, JSON
# ----------------------------------------------------------------------------------------------


def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        try:
            return _blob(uri).download_as_bytes(retry=_retry())
        except NotFound:
            raise StorageError(f"artifact not found: {uri}") from None
    path = Path(uri)
    if not path.is_file():
        raise StorageError(f"artifact not found: {uri}")
    return path.read_bytes()


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


# ----------------------------------------------------------------------------------------------
# Atomic staging of outputs
# ----------------------------------------------------------------------------------------------


def _sibling_tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def staged_file(uri: str | os.PathLike) -> Iterator[Path]:
    """Yield a local temp path; on success it is published at ``uri`` in one step.

    On an exception nothing is published and the temp file is removed.
    """
    uri = str(uri)
    if is_gcs(uri):
        with tempfile.TemporaryDirectory(prefix="sidreasoner-stage-") as tmpdir:
            tmp = Path(tmpdir) / "payload"
            yield tmp
            upload_file(tmp, uri)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_tmp(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty local temp folder; on success it replaces the folder at ``uri``.

    Local: renamed into place (a previous folder is moved aside first, then removed).
    GCS: uploaded in parallel, manifest last.
    """
    uri = str(uri)
    if is_gcs(uri):
        with tempfile.TemporaryDirectory(prefix="sidreasoner-stage-") as tmpdir:
            yield Path(tmpdir)
            upload_dir(tmpdir, uri)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_tmp(target)
    tmp.mkdir()
    try:
        yield tmp
        _write_local_manifest(tmp)
        old = None
        if target.exists():
            old = _sibling_tmp(target)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_local_manifest(root: Path) -> None:
    (root / MANIFEST).write_text(json.dumps(_manifest(root), indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------------
# Files and folders across backends
# ----------------------------------------------------------------------------------------------


def upload_file(local: str | os.PathLike, uri: str) -> None:
    if not is_gcs(uri):
        raise ValueError(f"upload_file needs a gs:// URI, got {uri}")
    _blob(uri).upload_from_filename(str(local), retry=_retry())


def upload_dir(local: str | os.PathLike, uri: str, workers: int = 8) -> str:
    """Upload a folder to a GCS prefix in parallel, manifest last; returns the folder digest.

    An existing manifest at the prefix is deleted first, so a half-overwritten folder is never
    taken for complete; files of the old version that the new one lacks are deleted at the end.
    """
    from google.cloud.storage import transfer_manager

    root = Path(local)
    manifest = _manifest(root)
    bucket_name, prefix = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    old = set(list_files(uri))
    if MANIFEST in old:
        bucket.blob(f"{prefix}/{MANIFEST}").delete(retry=_retry())
    names = list(manifest["files"])
    if names:
        results = transfer_manager.upload_many_from_filenames(
            bucket,
            names,
            source_directory=str(root),
            blob_name_prefix=f"{prefix}/",
            max_workers=workers,
            worker_type=transfer_manager.THREAD,
            upload_kwargs={"retry": _retry()},
            raise_exception=True,
        )
        _raise_first(results, uri)
    for stale in sorted(old - set(names) - {MANIFEST}):
        bucket.blob(f"{prefix}/{stale}").delete(retry=_retry())
    bucket.blob(f"{prefix}/{MANIFEST}").upload_from_string(
        json.dumps(manifest, indent=1, sort_keys=True), content_type="application/json",
        retry=_retry(),
    )
    return manifest["digest"]


def _raise_first(results: list[Any], uri: str) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise StorageError(f"transfer failed for {uri}: {result}") from result


def _read_gcs_manifest(uri: str) -> dict[str, Any]:
    try:
        return json.loads(read_bytes(join(uri, MANIFEST)))
    except StorageError:
        raise StorageError(
            f"folder artifact {uri} is missing or incomplete (no {MANIFEST}; an upload was "
            "interrupted or never happened)"
        ) from None


def download_dir(uri: str, local: str | os.PathLike, workers: int = 8) -> Path:
    """Download a complete GCS folder (verified against its manifest) into ``local``."""
    from google.cloud.storage import transfer_manager

    manifest = _read_gcs_manifest(uri)
    bucket_name, prefix = split_gcs(uri)
    root = Path(local)
    root.mkdir(parents=True, exist_ok=True)
    names = list(manifest["files"])
    if names:
        results = transfer_manager.download_many_to_path(
            gcs_client().bucket(bucket_name),
            names,
            destination_directory=str(root),
            blob_name_prefix=f"{prefix}/",
            max_workers=workers,
            worker_type=transfer_manager.THREAD,
            download_kwargs={"retry": _retry()},
            raise_exception=True,
        )
        _raise_first(results, uri)
    for rel, meta in manifest["files"].items():
        if file_digest(root / rel) != meta["digest"]:
            raise StorageError(f"{uri}/{rel}: digest mismatch after download")
    return root


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local path for a file or folder artifact (downloaded to a temp dir for gs://)."""
    uri = str(uri)
    if not is_gcs(uri):
        path = Path(uri)
        if not path.exists():
            raise StorageError(f"artifact not found: {uri}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sidreasoner-in-") as tmpdir:
        if _gcs_exists(uri):
            path = Path(tmpdir) / Path(split_gcs(uri)[1]).name
            _blob(uri).download_to_filename(str(path), retry=_retry())
            yield path
        else:
            yield download_dir(uri, Path(tmpdir) / "dir")


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy a file or folder artifact between any two URIs; returns the digest."""
    with local_copy(src) as path:
        if path.is_dir():
            with staged_dir(dst) as tmp:
                shutil.copytree(path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))
            return digest(dst)
        with staged_file(dst) as tmp:
            shutil.copyfile(path, tmp)
        return file_digest(path)


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
