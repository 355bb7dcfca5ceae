"""What a training stage prints: a periodic progress line carrying the latest loss, one line per
evaluation, and not the Trainer's own print of every log record."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from components.common.training.callbacks import ProgressLog


def test_the_progress_line_carries_the_latest_loss_and_evaluations_get_a_line(caplog):
    callback = ProgressLog()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=0)
    with caplog.at_level(logging.INFO):
        callback.on_train_begin(None, state, None)
        callback.progress.every = 0.0  # a line at every step
        state.global_step = 4
        callback.on_log(None, state, None, logs={"loss": 0.52371, "grad_norm": 0.5, "learning_rate": 1e-3})
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"eval_loss": 0.7, "eval_ndcg_at_10": 0.25, "epoch": 1.0})
        callback.on_train_end(None, state, None)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("training: 4/10 (40%) steps") and line.endswith("loss 0.5237") for line in lines)
    assert "evaluation at step 4: loss 0.7, ndcg_at_10 0.25" in lines
    assert lines[-1].endswith("loss 0.5237 (done)")
