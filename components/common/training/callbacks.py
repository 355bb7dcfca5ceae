"""HF Trainer callbacks installed by both engines (imported only inside the training processes:
``transformers`` is heavy, and config loading must not pay for it).

* :class:`CheckpointSync`: save every N steps and publish each checkpoint to object storage
  (in the background), :func:`train_with_checkpoints` the training run around it;
* :class:`MlflowMetrics`: every log record to the stage's MLflow run, per step;
* :class:`ProgressLog`: a periodic progress line with throughput and ETA;
* :class:`NewTokenWarmup`: train only the new (SID) token embedding rows for the first steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from components.common.logs import Progress
from components.common.training import checkpoints
from components.common.training.engine import numeric_logs
from components.common.training.launch import TrainJob

log = logging.getLogger(__name__)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def standard_callbacks(job: TrainJob) -> list[TrainerCallback]:
    """The callbacks every training stage installs."""
    return [CheckpointSync(job), MlflowMetrics(job), ProgressLog()]


def train_with_checkpoints(trainer: Any, job: TrainJob) -> None:
    """``trainer.train`` from the job's resume point, its log records shown by :class:`ProgressLog`.
    Should training fail, the checkpoint still uploading is finished first (a restart resumes from
    it), and an error of that upload is added to the training error's notes."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # ProgressLog's lines say it once, every record goes to MLflow
    sync = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CheckpointSync))
    try:
        trainer.train(resume_from_checkpoint=job.resume_from)
    except Exception as training_error:
        try:
            sync.publisher.wait()
        except Exception as upload_error:
            training_error.add_note(f"the upload of the last checkpoint failed too: {upload_error}")
        raise


class CheckpointSync(TrainerCallback):
    """Save every ``job.checkpoint_every`` steps and publish each saved checkpoint.

    The main process publishes (:class:`checkpoints.CheckpointPublisher`), in the background
    unless ``job.async_checkpoint_upload`` is off: a save waits for the previous upload, and
    training ends only once the last one is published.
    """

    def __init__(self, job: TrainJob):
        self.job = job
        self.publisher = checkpoints.CheckpointPublisher(job.checkpoint_uri, job.keep_checkpoints,
                                                         background=job.async_checkpoint_upload)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.job.checkpoint_every == 0:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its shards
        if state.is_world_process_zero:
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.publisher.submit(local, state.global_step, state.best_global_step)
        _barrier()  # in the background, the upload reads its own copy: the files may change now
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.publisher.wait()
        _barrier()  # every process ends training with the last checkpoint published
        return control


class MlflowMetrics(TrainerCallback):
    """Send every Trainer log record to the stage's MLflow run (main process only), as
    ``train/<key>`` at the record's global step."""

    def __init__(self, job: TrainJob):
        self.job = job
        self._client = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and logs and self.job.mlflow_run_id):
            return control
        from components.common.lineage import _mlflow

        mlflow = _mlflow()
        if self._client is None:
            self._client = mlflow.MlflowClient(self.job.tracking_uri)
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(key=f"train/{k}", value=v, timestamp=now, step=state.global_step)
                   for k, v in numeric_logs(logs).items()]
        for i in range(0, len(metrics), 500):
            self._client.log_batch(self.job.mlflow_run_id, metrics=metrics[i : i + 500])
        return control


class ProgressLog(TrainerCallback):
    """Periodic progress line (steps, throughput, ETA, latest loss) from the main process, and one
    line per evaluation. It stands in for the Trainer's ``PrinterCallback``, which prints every log
    record (:func:`train_with_checkpoints` removes it); every record still reaches MLflow."""

    def __init__(self):
        self.progress: Progress | None = None
        self.last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = Progress(log, "training", total=state.max_steps or None, unit="steps")
            self.last_step = state.global_step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs:
            if "loss" in logs:
                self.progress.detail = f"loss {float(logs['loss']):.4g}"
            evaluation = {k: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, (int, float))}
            if evaluation:
                log.info("evaluation at step %d: %s", state.global_step,
                         ", ".join(f"{k[5:]} {v:.4g}" for k, v in evaluation.items()))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step - self.last_step)
            self.last_step = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()
        return control


class NewTokenWarmup(TrainerCallback):
    """For the first ``steps`` optimizer steps, train only the embedding rows of new tokens.

    Every other gradient is zeroed and weight decay is paused, so the pretrained weights stay
    as they are while the new SID embeddings move away from their mean initialisation; then
    everything trains. Uses gradient hooks: in-process, DDP and ZeRO-2 (not ZeRO-3, whose
    parameters are partitioned).
    """

    def __init__(self, model: Any, new_token_ids: Sequence[int], steps: int):
        import torch

        self.steps = steps
        self.active = steps > 0
        self._decay: list[float] | None = None
        embedding = model.get_input_embeddings().weight
        row_mask = torch.zeros(embedding.shape[0], 1, dtype=embedding.dtype, device=embedding.device)
        row_mask[list(new_token_ids)] = 1
        output = model.get_output_embeddings()
        row_masked = {id(embedding)}  # Qwen3 ties the output head to the embeddings: one tensor
        if output is not None and output.weight.shape == embedding.shape:
            row_masked.add(id(output.weight))
        for param in model.parameters():
            if id(param) in row_masked:
                param.register_hook(lambda grad, mask=row_mask: grad * mask.to(grad.dtype) if self.active else grad)
            elif param.requires_grad:
                param.register_hook(lambda grad: torch.zeros_like(grad) if self.active else grad)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        active = state.global_step < self.steps
        if optimizer is not None:
            if active and self._decay is None:
                self._decay = [group.get("weight_decay", 0.0) for group in optimizer.param_groups]
                for group in optimizer.param_groups:
                    group["weight_decay"] = 0.0
            elif not active and self._decay is not None:
                for group, decay in zip(optimizer.param_groups, self._decay, strict=True):
                    group["weight_decay"] = decay
                self._decay = None
        if self.active and not active:
            log.info("new-token warmup done after %d steps: training every parameter", self.steps)
        self.active = active
        return control
