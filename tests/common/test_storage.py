"""Artifact IO against local disk and a real GCS emulator (google-cloud-storage)."""

from __future__ import annotations

import os

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
