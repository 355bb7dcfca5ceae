"""Artifact IO against local disk and a real GCS emulator (google-cloud-storage)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from components.common import storage
from components.common.storage import StorageError
from tests.faults import FaultyProxy

TABLE = pa.table({"item_id": ["a", "b", "c"], "codes": [[1, 2], [3, 4], [5, 6]]})


def _checkpoint(root, n_files=6):
    (root / "sub").mkdir(parents=True)
    for i in range(n_files):
        (root / ("sub" if i % 2 else "") / f"shard-{i}.bin").write_bytes(os.urandom(50_000 + i))
    return root


def test_local_parquet_roundtrip_and_digest(tmp_path):
    uri = tmp_path / "out" / "t.parquet"
    digest = storage.write_parquet(TABLE, uri)
    assert storage.read_parquet(uri).equals(TABLE)
    assert digest == storage.digest(uri) == storage.file_digest(uri)
    assert digest.startswith("sha256:")


def test_local_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with storage.staged_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_local_dir_replaced_atomically_and_kept_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with storage.staged_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with storage.staged_dir(target) as tmp:
            (tmp / "a.txt").write_text("v2-partial")
            raise RuntimeError("preempted")
    assert (target / "a.txt").read_text() == "v1"
    with storage.staged_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == [storage.MANIFEST, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_missing_artifact_names_the_uri(tmp_path):
    with pytest.raises(StorageError, match="nope.parquet"):
        storage.read_parquet(tmp_path / "nope.parquet")


def test_gcs_parquet_roundtrip_same_digest_as_local(gcs_bucket, tmp_path):
    uri = f"{gcs_bucket}/runs/r1/items.parquet"
    digest = storage.write_parquet(TABLE, uri)
    assert storage.exists(uri)
    assert storage.read_parquet(uri).equals(TABLE)
    assert storage.digest(uri) == digest
    local = storage.copy(uri, tmp_path / "items.parquet")
    assert local == digest


def test_gcs_folder_roundtrip_parallel_with_manifest(gcs_bucket, tmp_path):
    src = _checkpoint(tmp_path / "src")
    uri = f"{gcs_bucket}/ckpt/step-10"
    digest = storage.upload_dir(src, uri, workers=4)
    assert digest == storage.dir_digest(src) == storage.digest(uri)
    assert storage.MANIFEST in storage.list_files(uri)
    out = storage.download_dir(uri, tmp_path / "dst")
    assert storage.dir_digest(out) == digest
    assert (out / "sub" / "shard-1.bin").read_bytes() == (src / "sub" / "shard-1.bin").read_bytes()


def test_gcs_folder_without_manifest_is_incomplete(gcs_bucket, tmp_path):
    uri = f"{gcs_bucket}/ckpt/interrupted"
    storage.write_bytes(f"{uri}/shard-0.bin", b"partial upload")  # files, but no manifest
    assert not storage.exists(uri)
    with pytest.raises(StorageError, match="incomplete"):
        storage.download_dir(uri, tmp_path / "dst")


def test_gcs_folder_overwrite_drops_stale_files(gcs_bucket, tmp_path):
    uri = f"{gcs_bucket}/model"
    storage.upload_dir(_checkpoint(tmp_path / "v1", n_files=4), uri)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "only.bin").write_bytes(b"v2")
    storage.upload_dir(v2, uri)
    assert storage.list_files(uri) == [storage.MANIFEST, "only.bin"]


def test_staged_dir_to_gcs_publishes_on_success_only(gcs_bucket):
    uri = f"{gcs_bucket}/staged"
    with pytest.raises(RuntimeError):
        with storage.staged_dir(uri) as tmp:
            (tmp / "w.bin").write_bytes(b"x")
            raise RuntimeError("crash")
    assert storage.list_files(uri) == []
    with storage.staged_dir(uri) as tmp:
        (tmp / "w.bin").write_bytes(b"x")
    assert storage.exists(uri)


def test_gcs_transient_errors_are_retried(gcs_bucket, monkeypatch):
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    with FaultyProxy(emulator, fail_first=2, status=503) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.gcs_client.cache_clear()
        try:
            digest = storage.write_bytes(f"{gcs_bucket}/retry/blob.bin", b"payload")
            assert storage.read_bytes(f"{gcs_bucket}/retry/blob.bin") == b"payload"
        finally:
            storage.gcs_client.cache_clear()
    assert len(proxy.failed) == 2
    assert digest == storage.bytes_digest(b"payload")


def test_gcs_missing_object_names_the_uri(gcs_bucket):
    with pytest.raises(StorageError, match="absent.json"):
        storage.read_json(f"{gcs_bucket}/absent.json")


# ----------------------------------------------------------------------------------------------
# Hash once: a verified manifest is trusted
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def hashed(monkeypatch):
    """The files storage hashes from now on (every full read of a file's bytes)."""
    seen: list[str] = []
    real = storage.file_digest

    def counting(path):
        seen.append(str(path))
        return real(path)
    monkeypatch.setattr(storage, "file_digest", counting)
    return seen


def test_folder_digest_trusts_its_verified_manifest(tmp_path, hashed):
    target = tmp_path / "model"
    with storage.staged_dir(target) as tmp:
        _checkpoint(tmp, n_files=4)
    assert len(hashed) == 4  # the writer hashed each file once
    written = storage.digest(target)
    assert len(hashed) == 4 and written == storage.dir_digest(target)  # digest: no read; dir_digest: reads
    hashed.clear()
    (target / "shard-0.bin").write_bytes(b"changed in place")
    assert storage.digest(target) != written and hashed  # a changed file is seen, and re-hashed
    hashed.clear()
    (target / "extra.bin").write_bytes(b"new file")
    storage.digest(target)
    assert hashed  # a file the manifest does not list: re-hashed


def test_copy_and_download_carry_the_verified_manifest(gcs_bucket, tmp_path, hashed):
    with storage.staged_dir(tmp_path / "src") as tmp:
        _checkpoint(tmp, n_files=3)
    written = storage.digest(tmp_path / "src")
    hashed.clear()
    assert storage.copy(tmp_path / "src", tmp_path / "copy") == written
    assert hashed == []  # copied with its manifest (copy2 keeps modification times)
    assert storage.copy(tmp_path / "src", f"{gcs_bucket}/m") == written and hashed == []
    out = storage.download_dir(f"{gcs_bucket}/m", tmp_path / "down")
    assert len(hashed) == 3  # verified on download, once
    hashed.clear()
    assert storage.digest(out) == written and hashed == []


# ----------------------------------------------------------------------------------------------
# Replacing a folder keeps the old version readable
# ----------------------------------------------------------------------------------------------


def _version(root, label, n_files=3):
    root.mkdir(parents=True)
    for i in range(n_files):
        (root / f"f{i}.txt").write_text(f"{label}-{i}")
    return root


def _read_version(uri, tmp_path):
    out = storage.download_dir(uri, tmp_path / f"read-{os.urandom(4).hex()}")
    return {p.name: p.read_text() for p in out.iterdir() if p.name != storage.MANIFEST}


def test_gcs_overwrite_keeps_the_old_version_readable_until_complete(gcs_bucket, tmp_path, monkeypatch):
    from google.cloud.storage import Blob

    uri = f"{gcs_bucket}/model"
    storage.upload_dir(_version(tmp_path / "v1", "v1"), uri)
    real = Blob.upload_from_filename
    seen_during: list[dict] = []

    def interrupted(blob, filename, **kwargs):
        if not filename.endswith("f0.txt"):
            raise ConnectionResetError("upload killed halfway")
        real(blob, filename, **kwargs)  # the first new file lands over its plain name ...
        seen_during.append(_read_version(uri, tmp_path))  # ... while a reader reads the folder
    monkeypatch.setattr(Blob, "upload_from_filename", interrupted)
    with pytest.raises(StorageError, match=f"cannot write {uri}: ConnectionResetError: upload killed halfway"):
        storage.upload_dir(_version(tmp_path / "v2", "v2"), uri, workers=1)
    v1 = {f"f{i}.txt": f"v1-{i}" for i in range(3)}
    assert seen_during == [v1]
    assert _read_version(uri, tmp_path) == v1  # the interrupted upload left v1 whole
    monkeypatch.setattr(Blob, "upload_from_filename", real)
    storage.upload_dir(_version(tmp_path / "v3", "v3", n_files=2), uri)
    assert _read_version(uri, tmp_path) == {"f0.txt": "v3-0", "f1.txt": "v3-1"}
    assert storage.list_files(uri) == [storage.MANIFEST, "f0.txt", "f1.txt"]  # the aside copies are gone


def test_gcs_writers_racing_on_one_folder_cannot_interleave(gcs_bucket, gcs_preconditions, tmp_path, monkeypatch):
    from google.cloud.storage import Blob

    uri = f"{gcs_bucket}/model"
    storage.upload_dir(_version(tmp_path / "v1", "v1"), uri)
    real = Blob.upload_from_filename

    def slow_writer(blob, filename, **kwargs):
        monkeypatch.setattr(Blob, "upload_from_filename", real)
        storage.upload_dir(_version(tmp_path / "fast", "fast"), uri)  # another writer finishes first
        real(blob, filename, **kwargs)
    monkeypatch.setattr(Blob, "upload_from_filename", slow_writer)
    with pytest.raises(StorageError, match=f"{uri}: another writer is replacing this folder at the same time"):
        storage.upload_dir(_version(tmp_path / "slow", "slow"), uri, workers=1)
    assert _read_version(uri, tmp_path) == {f"f{i}.txt": f"fast-{i}" for i in range(3)}  # whole, not mixed
    assert gcs_preconditions and storage.list_files(uri) == [storage.MANIFEST, "f0.txt", "f1.txt", "f2.txt"]


def test_local_folder_is_swapped_in_whole(tmp_path):
    import threading

    target = tmp_path / "model"
    with storage.staged_dir(target) as tmp:
        _version(tmp / "x", "v0")
    stop, missing = threading.Event(), []

    def reader():
        while not stop.is_set():
            if not (target / "x" / "f0.txt").exists():
                missing.append(1)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 60):
            with storage.staged_dir(target) as tmp:
                _version(tmp / "x", f"v{n}")
    finally:
        stop.set()
        thread.join()
    assert missing == [] and (target / "x" / "f0.txt").read_text() == "v59-0"


def test_move_publishes_files_and_folders(gcs_bucket, tmp_path):
    for root in (tmp_path / "local", f"{gcs_bucket}/moved"):
        storage.write_text(storage.join(root, ".stage/a.txt"), "a")
        with storage.staged_dir(storage.join(root, ".stage/dir")) as tmp:
            _version(tmp / "in", "d")
        storage.write_text(storage.join(root, "a.txt"), "old")
        storage.move(storage.join(root, ".stage/a.txt"), storage.join(root, "a.txt"))
        storage.move(storage.join(root, ".stage/dir"), storage.join(root, "dir"))
        assert storage.read_text(storage.join(root, "a.txt")) == "a"
        assert storage.exists(storage.join(root, "dir")) and not storage.exists(storage.join(root, ".stage/a.txt"))
        assert storage.list_files(root) == sorted(["a.txt", f"dir/{storage.MANIFEST}", "dir/in/f0.txt",
                                                   "dir/in/f1.txt", "dir/in/f2.txt"])


# ----------------------------------------------------------------------------------------------
# Every failure names the URI
# ----------------------------------------------------------------------------------------------


def test_dead_gcs_connection_names_the_uri_within_the_deadline(gcs_bucket, monkeypatch):
    import time

    with FaultyProxy(os.environ["STORAGE_EMULATOR_HOST"], fail_first=10**9, status=503) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.gcs_client.cache_clear()
        storage.configure(retry_deadline_s=2.0)
        started = time.monotonic()
        try:
            with pytest.raises(StorageError, match=rf"cannot upload to {gcs_bucket}/x/items.parquet: gave up after "
                                                   r"retrying for 2s .*last error: .*503"):
                storage.write_parquet(TABLE, f"{gcs_bucket}/x/items.parquet")
            with pytest.raises(StorageError, match=rf"cannot read {gcs_bucket}/x/a.json: gave up after retrying"):
                storage.read_json(f"{gcs_bucket}/x/a.json")
        finally:
            storage.configure()
            storage.gcs_client.cache_clear()
    assert time.monotonic() - started < 30 and len(proxy.failed) > 2


def test_gcs_deadline_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(storage.ENV_RETRY_DEADLINE, "7")
    monkeypatch.setenv(storage.ENV_TIMEOUT, "3")
    assert storage.retry_deadline() == 7 and storage.request_timeout() == 3
    storage.configure(retry_deadline_s=11.0, timeout_s=2.0)  # a stage's profile settings win
    try:
        assert storage.retry_deadline() == 11 and storage.request_timeout() == 2
    finally:
        storage.configure()


def test_full_disk_names_the_uri_and_leaves_nothing(tmp_path):
    from tests.filesystems import full_disk

    big = pa.table({"x": [os.urandom(1000).hex() for _ in range(2000)]})  # ~4 MB, incompressible
    with full_disk(tmp_path / "disk", "256k") as disk:
        target = disk / "out" / "items.parquet"
        with pytest.raises(StorageError, match=rf"cannot write {target}: no space left on device"):
            storage.write_parquet(big, target)
        assert list((disk / "out").iterdir()) == []
        with pytest.raises(StorageError, match=rf"cannot write {disk / 'model'}: no space left on device"):
            with storage.staged_dir(disk / "model") as tmp:
                (tmp / "weights.bin").write_bytes(os.urandom(1 << 20))
        assert sorted(p.name for p in disk.iterdir()) == ["out"]


def test_file_size_limit_names_the_uri(tmp_path):
    import subprocess
    import sys

    from tests.filesystems import file_size_limit

    target = tmp_path / "items.parquet"
    code = ("import os, pyarrow as pa; from components.common import storage; "
            "storage.write_parquet(pa.table({'x': [os.urandom(1000).hex() for _ in range(2000)]}), "
            f"{str(target)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=file_size_limit(64 * 1024), cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode != 0
    assert f"StorageError: cannot write {target}: " in proc.stderr and "File too large" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_names_the_uri(tmp_path):
    from tests.filesystems import unwritable

    with unwritable(tmp_path / "ro") as how:
        reason = {"EACCES": "permission denied", "EROFS": "read-only file system",
                  "EPERM": "operation not permitted"}[how]
        with pytest.raises(StorageError, match=rf"cannot write {tmp_path / 'ro' / 'a.json'}: {reason}"):
            storage.write_json(tmp_path / "ro" / "a.json", {"a": 1})


# ----------------------------------------------------------------------------------------------
# Conditional writes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_conditional_writes_compare_and_swap(backend, tmp_path, request):
    if backend == "gcs":
        request.getfixturevalue("gcs_preconditions")
        root = request.getfixturevalue("gcs_bucket")
    else:
        root = str(tmp_path)
    uri = storage.join(root, "claims", "k.json")
    assert storage.read_versioned(uri) is None
    first = storage.write_if(uri, b"one", None)
    assert first and storage.write_if(uri, b"again", None) is None  # only if absent
    assert storage.read_versioned(uri) == (b"one", first)
    second = storage.write_if(uri, b"two", first)
    assert second and second != first
    assert storage.write_if(uri, b"stale", first) is None  # the version moved on
    assert not storage.delete_if(uri, first)
    assert storage.delete_if(uri, second) and storage.read_versioned(uri) is None
