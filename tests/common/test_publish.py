"""A stage's outputs appear together or not at all (``Stage.execute`` + components/common/publish.py),
locally and on GCS: two toy stages declared with the real API, a producer whose ``run`` can fail
or be killed at any point and a consumer reading its output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pytest

from components.common import artifacts, publish, storage
from components.common.config import Section
from components.common.errors import InputError
from components.common.stage import Input, Stage, StageContext
from components.common.storage import StorageError

REPO = Path(__file__).resolve().parents[2]


class ToyConfig(Section):
    mode: Literal["ok", "fail", "expected", "hang"] = "ok"
    folder: bool = False


ITEMS = pa.table({"item_id": ["a", "b"], "title": ["A thing", "B thing"], "description": ["", ""],
                  "brand": ["", ""], "categories": [[], []]})


def produce(cfg: ToyConfig, ctx, inputs, outputs, tracker):
    digests = {"items": storage.write_parquet(ITEMS, outputs["items"])}
    if cfg.mode == "fail":
        raise RuntimeError("crashed after the first output")
    if cfg.mode == "expected":
        raise StorageError(f"cannot write {outputs['stats']}: no space left on device")
    if cfg.mode == "hang":
        print("READY", flush=True)
        time.sleep(600)
    if cfg.folder:
        with storage.staged_dir(outputs["stats"]) as tmp:
            (tmp / "weights.bin").write_bytes(b"w" * 100)
    else:
        digests["stats"] = storage.write_json(outputs["stats"], {"rows": 2})
    return {name: {"digest": digest} for name, digest in digests.items()}


def consume(cfg, ctx, inputs, outputs, tracker):
    return {"stats": {"digest": storage.write_json(outputs["stats"], {"read": storage.read_parquet(inputs["items"]).num_rows})}}


PRODUCER = Stage(name="toy", config=ToyConfig, run="tests.common.test_publish:produce", description="toy producer",
                 outputs={"items": artifacts.ITEMS, "stats": artifacts.STATS})
FOLDER_PRODUCER = Stage(name="toy", config=ToyConfig, run="tests.common.test_publish:produce",
                        description="toy producer of a folder", outputs={"items": artifacts.ITEMS, "stats": artifacts.MODEL})
CONSUMER = Stage(name="toy_reader", config=ToyConfig, run="tests.common.test_publish:consume", description="toy consumer",
                 inputs={"items": Input(artifacts.ITEMS, "toy.items")}, outputs={"stats": artifacts.STATS})


def ctx(tmp: Path, tracking_uri: str) -> StageContext:
    return StageContext(run_key="local-publish", pipeline_name="p", profile="test", config_hash="0" * 16,
                        tracking_uri=tracking_uri, experiment="publish", cache_uri=str(tmp / "cache"), seed=1,
                        final_stage="toy_reader")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def outs(root: str) -> dict[str, str]:
    return {"items": storage.join(root, "items.parquet"), "stats": storage.join(root, "stats.json")}


def read_outs(root: str) -> dict[str, str]:
    return {"stats": storage.join(root, "stats.json")}


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('gcs_bucket')}/out"


def test_outputs_are_published_together_with_a_record(root, tmp_path, tracking_uri):
    metadata = PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(root))
    assert storage.list_files(root) == ["_PUBLISH.toy.json", "items.parquet", "stats.json"]  # no staging left
    record = storage.read_json(storage.join(root, "_PUBLISH.toy.json"))
    assert record["state"] == "complete" and record["run_key"] == "local-publish"
    assert {n: e["digest"] for n, e in record["outputs"].items()} == {n: m["digest"] for n, m in metadata.items()}
    assert metadata["items"]["digest"] == storage.digest(storage.join(root, "items.parquet"))
    consumed = CONSUMER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {"items": outs(root)["items"]},
                                read_outs(storage.join(root, "next")))
    assert storage.read_json(storage.join(root, "next", "stats.json")) == {"read": 2} and consumed


@pytest.mark.parametrize("mode, error", [("fail", RuntimeError), ("expected", StorageError)])
def test_a_failing_stage_publishes_nothing(root, tmp_path, tracking_uri, mode, error):
    with pytest.raises(error) as info:
        PRODUCER.execute(ToyConfig(mode=mode), ctx(tmp_path, tracking_uri), {}, outs(root))
    assert storage.list_files(root) == [] if storage.is_gcs(root) else not Path(root).exists()
    if mode == "expected":  # the message names the final URI, not the staging one
        assert str(info.value) == f"cannot write {outs(root)['stats']}: no space left on device"


def test_a_folder_output_replaces_the_old_one_whole(root, tmp_path, tracking_uri):
    FOLDER_PRODUCER.execute(ToyConfig(folder=True), ctx(tmp_path, tracking_uri), {}, outs(root))
    model = outs(root)["stats"]
    first = storage.digest(model)
    FOLDER_PRODUCER.execute(ToyConfig(folder=True), ctx(tmp_path, tracking_uri), {}, outs(root))
    assert storage.digest(model) == first and storage.is_dir(model)
    assert not [f for f in storage.list_files(root) if "staging" in f or storage.PREVIOUS in f]


def test_an_interrupted_publish_is_refused_by_the_next_stage(root, tmp_path, tracking_uri, monkeypatch):
    PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(root))  # a complete old version
    moves = []
    real = storage.move

    def killed_after_one(src, dst):
        if moves:
            raise KeyboardInterrupt  # the process dies between two moves
        moves.append(dst)
        real(src, dst)
    monkeypatch.setattr(storage, "move", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(root))
    monkeypatch.setattr(storage, "move", real)
    assert storage.read_json(storage.join(root, "_PUBLISH.toy.json"))["state"] == "publishing"
    with pytest.raises(InputError, match=rf"input items: {outs(root)['items']} belongs to an interrupted publish "
                                         r"of toy .* run toy again"):
        CONSUMER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {"items": outs(root)["items"]},
                         read_outs(storage.join(root, "next")))
    PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(root))  # running it again repairs it
    CONSUMER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {"items": outs(root)["items"]},
                     read_outs(storage.join(root, "next")))


def test_an_output_changed_after_its_publish_is_refused(tmp_path, tracking_uri):
    root = str(tmp_path / "out")
    PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(root))
    storage.write_parquet(ITEMS.slice(0, 1), outs(root)["items"])  # edited by hand afterwards
    with pytest.raises(InputError, match=r"input items: .*items.parquet changed after toy published it"):
        CONSUMER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {"items": outs(root)["items"]},
                         read_outs(str(tmp_path / "next")))


def test_staging_left_by_a_killed_attempt_is_removed_by_the_next(tmp_path, tracking_uri):
    root = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = root / ".staging-toy-0123456789ab"
    leftover.mkdir(parents=True)
    (leftover / "items.parquet").write_bytes(b"half")
    storage.write_json(leftover / publish.OWNER, {"host": os.uname().nodename, "pid": dead.pid,
                                                  "run_key": "x", "started": time.time()})
    alive = root / ".staging-toy-ba9876543210"
    alive.mkdir()
    storage.write_json(alive / publish.OWNER, {"host": os.uname().nodename, "pid": os.getpid(),
                                               "run_key": "y", "started": time.time()})
    PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(str(root)))
    assert not leftover.exists() and alive.exists()  # a live attempt's staging is never touched


def test_sigterm_unwinds_and_leaves_nothing(tmp_path, tracking_uri):
    code = ("import sys; from pathlib import Path; from tests.common.test_publish import *; "
            "from components.common.stage import _terminate_on_sigterm; _terminate_on_sigterm(); "
            f"PRODUCER.execute(ToyConfig(mode='hang'), ctx(Path({str(tmp_path)!r}), {tracking_uri!r}), {{}}, "
            f"outs({str(tmp_path / 'out')!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        assert list((tmp_path / "out").iterdir())  # the staging folder, mid-run
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert not (tmp_path / "out").exists()


def test_outputs_the_writers_digested_are_not_read_again(tmp_path, tracking_uri, monkeypatch):
    hashed = []
    real = storage.file_digest
    monkeypatch.setattr(storage, "file_digest", lambda path: hashed.append(str(path)) or real(path))
    PRODUCER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {}, outs(str(tmp_path / "out")))
    assert len(hashed) == 1  # write_parquet hashed items.parquet as it wrote it; nothing after
    hashed.clear()
    CONSUMER.execute(ToyConfig(), ctx(tmp_path, tracking_uri), {"items": str(tmp_path / "out" / "items.parquet")},
                     read_outs(str(tmp_path / "next")))
    assert hashed == [str(tmp_path / "out" / "items.parquet")]  # the input, once
