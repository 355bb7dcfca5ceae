"""Checkpoint publishing: how long ``on_save`` holds training per checkpoint, synchronous vs in
the background (``checkpoint.async_upload``), publishing to a slow store: a local folder behind a
simulated 100 MB/s link, with training steps between saves that take as long as one upload (the
steps sleep, as a GPU step leaves the CPU to the upload thread)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from transformers import TrainerControl, TrainerState

from components.common import storage
from components.common.training import checkpoints
from components.common.training.callbacks import CheckpointSync
from components.common.training.launch import TrainJob

CHECKPOINT_MB, LINK_MB_PER_S, SAVES = 64, 100.0, 4
STEPS_SECONDS = CHECKPOINT_MB / LINK_MB_PER_S  # training between two saves: as long as an upload


@contextlib.contextmanager
def slow_link() -> Iterator[None]:
    """Every published folder also waits for its bytes to cross the simulated link."""
    real = checkpoints._publish_dir

    def publish_dir(local: Path, uri: str) -> None:
        size = sum(f.stat().st_size for f in Path(local).rglob("*") if f.is_file())
        time.sleep(size / (LINK_MB_PER_S * 1e6))
        real(local, uri)

    checkpoints._publish_dir = publish_dir
    try:
        yield
    finally:
        checkpoints._publish_dir = real


def _train(root: Path, background: bool) -> dict[str, float]:
    output_dir = root / "checkpoints"
    job = TrainJob(entry="m:f", stage="bench", payload={}, output_dir=str(output_dir), final_dir=str(root / "final"),
                   checkpoint_uri=str(root / "store"), checkpoint_every=1, keep_checkpoints=2,
                   async_checkpoint_upload=background)
    sync, args = CheckpointSync(job), SimpleNamespace(output_dir=str(output_dir))
    held = 0.0
    start = time.perf_counter()
    for step in range(1, SAVES + 1):
        time.sleep(STEPS_SECONDS)
        folder = output_dir / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(os.urandom(CHECKPOINT_MB * 1_000_000))
        begin = time.perf_counter()
        sync.on_save(args, TrainerState(global_step=step), TrainerControl())
        held += time.perf_counter() - begin
    begin = time.perf_counter()
    sync.on_train_end(args, TrainerState(global_step=SAVES), TrainerControl())
    held_at_end = time.perf_counter() - begin
    assert checkpoints.complete(job.checkpoint_uri) == [SAVES - 1, SAVES]
    assert storage.exists(storage.join(job.checkpoint_uri, f"checkpoint-{SAVES}", storage.MANIFEST))
    return {"on_save_s_per_checkpoint": held / SAVES, "on_train_end_s": held_at_end,
            "training_s": time.perf_counter() - start}


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp, slow_link():
        synchronous = _train(Path(tmp) / "sync", background=False)
        background = _train(Path(tmp) / "async", background=True)
    return {
        "checkpoint_mb": CHECKPOINT_MB, "link_mb_per_s": LINK_MB_PER_S, "saves": SAVES,
        "steps_s_between_saves": STEPS_SECONDS, "sync": synchronous, "async": background,
        "summary": {
            "sync_on_save_s": round(synchronous["on_save_s_per_checkpoint"], 3),
            "async_on_save_s": round(background["on_save_s_per_checkpoint"], 3),
            "on_save_blocking_sync_vs_async_ratio": round(
                synchronous["on_save_s_per_checkpoint"] / background["on_save_s_per_checkpoint"], 1),
            "training_time_sync_vs_async_ratio": round(synchronous["training_s"] / background["training_s"], 2),
        },
    }
