"""Shared fixtures: real servers on 127.0.0.1 started (and stopped) by the tests themselves.

* ``gcs_emulator``: gcp-storage-emulator, with STORAGE_EMULATOR_HOST pointing at it;
  ``gcs_bucket``: a fresh bucket there; ``gcs_preconditions``: the emulator behind a proxy that
  enforces GCS's generation preconditions (tests/faults.py), for this test and its subprocesses.
* ``mlflow_server``: ``mlflow server`` with a sqlite store.
* ``demo_data``: a small synthetic Amazon-2018 catalog.
* ``office_pack``: the shared real Office release pack (skips when ../shared is absent).

``make test`` runs the suite on several pytest-xdist workers (:func:`pytest_xdist_make_scheduler`
says how tests are shared out); each worker has its own temp folder (below).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "test-project")
#: An xdist worker's own temp folder. Training stages work in <tmp>/sidreasoner-train/<stage>-<job
#: fingerprint> and wipe it first: two workers training the same job (same config, same data) must
#: not share it. Subprocesses (the stage CLIs, kfp's local runner) inherit TMPDIR.
WORKER_TMP = (Path(tempfile.gettempdir()) / f"sidreasoner-tests-{os.getpid()}-{os.environ['PYTEST_XDIST_WORKER']}"
              if "PYTEST_XDIST_WORKER" in os.environ else None)
if WORKER_TMP:
    WORKER_TMP.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(WORKER_TMP)


from components.common.processes import stop_process_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run only where CUDA is visible; elsewhere they are skipped, saying why."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device is visible")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Share tests out a module at a time, so that a module's fixtures run once, and tests/e2e as
    one unit: its two modules share the session's first demo run, which takes minutes."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/e2e" if module.startswith("tests/e2e/") else module

    return ModuleScheduling(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker's temp folder goes with it (its servers are stopped by then: fixtures tear down first)."""
    if WORKER_TMP:
        shutil.rmtree(WORKER_TMP, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server a test started in its own session, and what it spawned."""
    stop_process_group(proc, grace_s=15)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> Iterator[str]:
    """A gcp-storage-emulator on 127.0.0.1; yields its base URL (STORAGE_EMULATOR_HOST is set)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "gcp-storage-emulator"), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, 30, proc)
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from components.common import storage

        storage.gcs_client.cache_clear()
        yield url
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        storage.gcs_client.cache_clear()
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def gcs_bucket(gcs_emulator, request) -> str:
    """A fresh bucket on the emulator; yields ``gs://<bucket>``."""
    from components.common import storage

    name = "b-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    name = name.rstrip("-") + f"-{time.monotonic_ns() % 100000}"
    storage.gcs_client().create_bucket(name)
    return f"gs://{name}"


@pytest.fixture
def gcs_preconditions(gcs_emulator, monkeypatch) -> Iterator[str]:
    """STORAGE_EMULATOR_HOST at a :class:`tests.faults.PreconditionProxy` in front of the
    emulator (which does not enforce ``ifGenerationMatch`` itself); yields the proxy's URL."""
    from components.common import storage
    from tests.faults import PreconditionProxy

    with PreconditionProxy(gcs_emulator) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.gcs_client.cache_clear()
        try:
            yield proxy.url
        finally:
            storage.gcs_client.cache_clear()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` with a sqlite store on 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc)
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small synthetic Amazon-2018 catalog (meta.json.gz, reviews.json.gz)."""
    from components.ingest.demo_data import write_demo_data

    out = tmp_path_factory.mktemp("demo-data")
    write_demo_data(str(out), n_items=200, n_users=400, seed=3)
    return out


@pytest.fixture(scope="session")
def office_pack() -> Path:
    """The shared real Office release pack; the test skips when ../shared is absent."""
    path = SHARED / "data" / "amazon18-office"
    if not (path / "item.json").is_file():
        pytest.skip("../shared/data/amazon18-office is not present")
    return path
