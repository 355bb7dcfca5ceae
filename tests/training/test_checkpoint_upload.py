"""Checkpoint publishing while training: the main process uploads in the background (``on_save``
returns once the upload has started, the next save and the end of training wait for it and
raise its error), a resume never starts from a checkpoint whose upload did not finish, and old
checkpoints are deleted with retries, a delete that keeps failing leaving a warning, not a
failed run.

The callback is driven as the HF Trainer drives it (``on_save`` after the checkpoint folder is
written, ``on_train_end``), against real local storage and the GCS emulator; uploads are held
at a gate (an Event) by wrapping the real storage functions.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from components.common import storage
from components.common.config import ConfigError, parse_section
from components.common.storage import StorageError
from components.common.training import checkpoints
from components.common.training.callbacks import CheckpointSync, train_with_checkpoints
from components.common.training.launch import TrainJob
from components.common.training.settings import TrainerSettings
from tests.faults import FaultyProxy
from tests.filesystems import unwritable


def saved(output_dir: Path, step: int) -> Path:
    """A checkpoint folder as the Trainer writes it at ``step``."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step % 256]) * 4096)
    (folder / "optimizer.pt").write_bytes(b"adam" * step)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "best_global_step": None}))
    return folder


class Run:
    """One training process's :class:`CheckpointSync`, saving the way the Trainer does."""

    def __init__(self, tmp: Path, uri: str, keep: int = 2, background: bool = True):
        self.output_dir = tmp / "checkpoints"
        self.job = TrainJob(entry="m:f", stage="align_sft", payload={}, output_dir=str(self.output_dir),
                            final_dir=str(tmp / "final"), checkpoint_uri=uri, checkpoint_every=5,
                            keep_checkpoints=keep, async_checkpoint_upload=background)
        self.sync = CheckpointSync(self.job)
        self.args = SimpleNamespace(output_dir=str(self.output_dir))

    def save(self, step: int) -> None:
        saved(self.output_dir, step)
        self.sync.on_save(self.args, TrainerState(global_step=step), TrainerControl())

    def end(self) -> None:
        self.sync.on_train_end(self.args, TrainerState(global_step=0), TrainerControl())


class Gates:
    """Holds each checkpoint's upload at a gate until the test opens it."""

    def __init__(self):
        self.reached: dict[int, threading.Event] = {}
        self.open: dict[int, threading.Event] = {}

    def __call__(self, step: int) -> None:
        self.reached.setdefault(step, threading.Event()).set()
        assert self.open.setdefault(step, threading.Event()).wait(timeout=120), f"gate {step} never opened"

    def hold(self, step: int) -> None:
        self.reached.setdefault(step, threading.Event())
        self.open.setdefault(step, threading.Event())

    def wait_reached(self, step: int) -> None:
        assert self.reached[step].wait(timeout=120), f"the upload of checkpoint {step} never started"


def step_of(uri: str) -> int | None:
    name = storage.basename(uri)
    return int(name.split("-", 1)[1]) if name.startswith("checkpoint-") else None


@pytest.fixture
def gated_uploads(monkeypatch) -> Gates:
    """Every held checkpoint's upload waits at its gate before it starts."""
    gates, real = Gates(), checkpoints._publish_dir

    def publish_dir(local: Path, uri: str) -> None:
        if step_of(uri) in gates.open:
            gates(step_of(uri))
        real(local, uri)

    monkeypatch.setattr(checkpoints, "_publish_dir", publish_dir)
    return gates


def test_on_save_returns_while_the_upload_runs_and_the_next_save_waits(tmp_path, remote, gated_uploads):
    run = Run(tmp_path, remote)
    gated_uploads.hold(5)
    run.save(5)  # returns with checkpoint 5's upload held at its gate
    gated_uploads.wait_reached(5)
    assert checkpoints.complete(remote) == []

    next_save = threading.Thread(target=run.save, args=(10,))
    next_save.start()
    next_save.join(timeout=0.5)
    assert next_save.is_alive(), "the next save went on while the previous checkpoint was still uploading"
    gated_uploads.open[5].set()
    next_save.join(timeout=120)
    assert not next_save.is_alive()
    assert 5 in checkpoints.complete(remote)
    run.end()
    assert checkpoints.complete(remote) == [5, 10]
    assert not any((run.output_dir / ".uploading").iterdir())  # the uploads' copies are gone


def test_synchronous_upload_publishes_before_on_save_returns(tmp_path, remote):
    run = Run(tmp_path, remote, background=False)
    run.save(5)
    assert checkpoints.complete(remote) == [5]


def test_the_upload_reads_a_copy_the_trainers_rotation_cannot_delete(tmp_path, gated_uploads):
    """The Trainer's ``save_total_limit`` rotation deletes local checkpoint folders (the one still
    uploading too, when the best checkpoint is kept): the upload reads its own copy."""
    remote = str(tmp_path / "remote")
    run = Run(tmp_path, remote)
    gated_uploads.hold(5)
    run.save(5)
    gated_uploads.wait_reached(5)
    shutil.rmtree(run.output_dir / "checkpoint-5")
    gated_uploads.open[5].set()
    run.end()
    published = Path(remote) / "checkpoint-5"
    assert (published / "model.safetensors").read_bytes() == bytes([5]) * 4096
    assert (published / "optimizer.pt").read_bytes() == b"adam" * 5


def test_an_upload_error_surfaces_at_the_next_save(tmp_path):
    remote = tmp_path / "remote"
    run = Run(tmp_path, str(remote))
    run.save(5)
    run.end()
    with unwritable(remote):
        run.save(10)  # started: the failure comes later
        with pytest.raises(StorageError, match=rf"cannot write {remote / 'checkpoint-10'}"):
            run.save(15)
    assert checkpoints.complete(str(remote)) == [5]


def test_an_upload_error_surfaces_at_the_end_of_training(tmp_path):
    remote = tmp_path / "remote"
    run = Run(tmp_path, str(remote))
    with unwritable(remote):
        run.save(5)
        with pytest.raises(StorageError, match=rf"cannot write {remote / 'checkpoint-5'}"):
            run.end()
    run.end()  # the error was raised once; nothing is pending any more


class FailingTrainer:
    """The HF Trainer's interface that :func:`train_with_checkpoints` uses; ``train`` saves
    once, then fails."""

    def __init__(self, run: Run, step: int):
        self.run, self.step = run, step
        self.callback_handler = SimpleNamespace(callbacks=[object(), run.sync])

    def remove_callback(self, callback):
        self.callback_handler.callbacks = [c for c in self.callback_handler.callbacks
                                           if not (isinstance(callback, type) and isinstance(c, callback))]

    def train(self, resume_from_checkpoint=None):
        self.run.save(self.step)
        raise RuntimeError("CUDA out of memory")


def test_a_failed_run_finishes_its_upload_first(tmp_path, gated_uploads):
    remote = str(tmp_path / "remote")
    run = Run(tmp_path, remote)
    gated_uploads.hold(5)
    threading.Timer(0.2, gated_uploads.open[5].set).start()  # how long the upload takes is irrelevant
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        train_with_checkpoints(FailingTrainer(run, 5), run.job)
    assert checkpoints.complete(remote) == [5]  # a restart resumes from it


def test_a_failed_run_names_a_failed_upload_too(tmp_path):
    remote = tmp_path / "remote"
    run = Run(tmp_path, str(remote))
    with unwritable(remote), pytest.raises(RuntimeError, match="CUDA out of memory") as failure:
        train_with_checkpoints(FailingTrainer(run, 5), run.job)
    assert any(note.startswith("the upload of the last checkpoint failed too: cannot write")
               for note in failure.value.__notes__)


def test_resume_never_starts_from_a_checkpoint_whose_upload_did_not_finish(tmp_path, remote, monkeypatch):
    """The upload of checkpoint 10 is held after its files are written, just before it is made
    complete (local: the staged folder's rename; GCS: the manifest), then fails: a restart at
    either moment resumes from checkpoint 5."""
    gates = Gates()
    gates.hold(10)
    if storage.is_gcs(remote):
        real_manifest = storage._write_gcs_manifest

        def write_manifest(uri, manifest, generation):
            if step_of(uri) == 10:
                gates(10)
                raise StorageError(f"cannot write the manifest of {uri}: connection reset")
            return real_manifest(uri, manifest, generation)

        monkeypatch.setattr(storage, "_write_gcs_manifest", write_manifest)
    else:
        real_replace = storage.replace_path

        def replace_path(new, target):
            if step_of(str(target)) == 10:
                gates(10)
                raise OSError(5, "Input/output error", str(target))
            real_replace(new, target)

        monkeypatch.setattr(storage, "replace_path", replace_path)

    run = Run(tmp_path, remote)
    run.save(5)
    run.save(10)
    gates.wait_reached(10)
    assert any("checkpoint-10" in f for f in storage.list_files(remote))  # its files are there
    assert checkpoints.complete(remote) == [5]
    assert checkpoints.restore(remote, tmp_path / "restart-1").name == "checkpoint-5"
    gates.open[10].set()
    with pytest.raises(StorageError, match="checkpoint-10"):
        run.end()
    assert checkpoints.complete(remote) == [5]
    assert checkpoints.restore(remote, tmp_path / "restart-2").name == "checkpoint-5"


# ----------------------------------------------------------------------------------------------
# Deleting old checkpoints
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def faulty_gcs(gcs_emulator, monkeypatch):
    """``start(fail_first, match)``: GCS requests from then on go through a :class:`FaultyProxy`."""
    proxies = []

    def start(fail_first: int, match: str) -> FaultyProxy:
        proxy = FaultyProxy(gcs_emulator, fail_first=fail_first, status=503, match=match).__enter__()
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.gcs_client.cache_clear()
        return proxy

    yield start
    storage.configure()
    storage.gcs_client.cache_clear()
    for proxy in proxies:
        proxy.__exit__()


def test_a_transiently_failing_delete_is_retried(tmp_path, gcs_bucket, faulty_gcs):
    remote = storage.join(gcs_bucket, "run")
    run = Run(tmp_path, remote)
    run.save(5)
    run.save(10)
    run.end()
    proxy = faulty_gcs(fail_first=2, match="o/run%2Fcheckpoint-5%2F")  # its objects, not their listing
    run.save(15)  # rotation deletes checkpoint 5
    run.end()
    assert len(proxy.failed) == 2 and all(request.startswith("DELETE ") for request in proxy.failed)
    assert checkpoints.complete(remote) == [10, 15]
    assert not any(f.startswith("checkpoint-5/") for f in storage.list_files(remote))


def test_a_delete_that_keeps_failing_warns_and_training_goes_on(tmp_path, gcs_bucket, faulty_gcs, caplog):
    remote = storage.join(gcs_bucket, "run")
    run = Run(tmp_path, remote)
    run.save(5)
    run.save(10)
    run.end()
    faulty_gcs(fail_first=10**9, match="o/run%2Fcheckpoint-5%2F")
    storage.configure(retry_deadline_s=1.0)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        run.save(15)
        run.save(20)
        run.end()
    assert checkpoints.complete(remote) == [5, 15, 20]  # 5 left whole (its manifest went first, or nothing)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(f"could not delete {remote}/checkpoint-5" in w for w in warnings)
    assert "503" in warnings[0]


def test_a_local_delete_that_fails_warns_and_a_later_clean_up_removes_it(tmp_path, caplog):
    remote = tmp_path / "remote"
    run = Run(tmp_path, str(remote), keep=1)
    run.save(5)
    run.end()
    with unwritable(remote / "checkpoint-5"), caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        run.save(10)
        run.end()
        assert checkpoints.complete(str(remote)) == [5, 10]
        assert not checkpoints.drop_all(str(remote))
    assert any(f"could not delete {remote / 'checkpoint-5'}" in r.getMessage() for r in caplog.records)
    assert checkpoints.drop_all(str(remote)) and checkpoints.complete(str(remote)) == []


def test_async_upload_is_a_validated_setting():
    assert TrainerSettings().checkpoint.async_upload is True
    assert parse_section(TrainerSettings, {"checkpoint": {"async_upload": False}}, "grpo").checkpoint.async_upload is False
    with pytest.raises(ConfigError, match=r"grpo\.checkpoint\.async_upload"):
        parse_section(TrainerSettings, {"checkpoint": {"async_upload": "later"}}, "grpo")

