"""Where GRPO rollouts are generated: HF ``generate`` in the training processes (CPU), vLLM
colocated with training, or a ``trl vllm-serve`` server on GPUs of its own.

The trainer code is the same for all three; only GRPOConfig's ``use_vllm`` / ``vllm_mode`` /
``vllm_server_base_url`` differ. In server mode without a configured URL the stage starts the
server itself on its first ``vllm_server_gpus`` GPUs and trains on the remaining ones.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from components.common.config import ConfigError
from components.grpo.config import GRPOStageConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutPlan:
    engine: str
    """"hf" or "vllm"."""
    vllm_mode: str | None = None
    server_url: str | None = None
    server_gpus: list[int] = field(default_factory=list)
    """GPUs of a server the stage starts (empty: none started)."""
    train_gpus: list[int] = field(default_factory=list)


def plan_rollouts(cfg: GRPOStageConfig, gpus: int, prefix: str = "grpo") -> RolloutPlan:
    """Choose the rollout engine for this machine; refuse what it cannot run."""
    rollout = cfg.rollout
    engine = rollout.engine if rollout.engine != "auto" else ("vllm" if gpus else "hf")
    if engine == "hf":
        return RolloutPlan(engine="hf", train_gpus=list(range(gpus)))
    if gpus == 0:
        raise ConfigError(f"{prefix}.rollout.engine: vllm needs a GPU and none is visible; use 'hf' or 'auto' on a CPU")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"{prefix}.rollout.engine: vllm is not installed in this image "
                          "(the GPU image installs the 'gpu' extra: pip install 'sidreasoner[gpu]')")
    if rollout.vllm_mode == "colocate":
        return RolloutPlan(engine="vllm", vllm_mode="colocate", train_gpus=list(range(gpus)))
    if rollout.vllm_server_base_url is not None:
        return RolloutPlan(engine="vllm", vllm_mode="server", server_url=rollout.vllm_server_base_url,
                           train_gpus=list(range(gpus)))
    if rollout.vllm_server_gpus >= gpus:
        raise ConfigError(f"{prefix}.rollout.vllm_server_gpus: {rollout.vllm_server_gpus} GPU(s) for the vLLM "
                          f"server leaves none of the {gpus} visible GPU(s) for training")
    if rollout.vllm_server_gpus % rollout.vllm_tensor_parallel_size:
        raise ConfigError(f"{prefix}.rollout.vllm_server_gpus ({rollout.vllm_server_gpus}) must be a multiple of "
                          f"vllm_tensor_parallel_size ({rollout.vllm_tensor_parallel_size})")
    return RolloutPlan(engine="vllm", vllm_mode="server", server_url=f"http://127.0.0.1:{rollout.vllm_server_port}",
                       server_gpus=list(range(rollout.vllm_server_gpus)),
                       train_gpus=list(range(rollout.vllm_server_gpus, gpus)))


def vllm_server_command(cfg: GRPOStageConfig, model_dir: str, num_gpus: int) -> list[str]:
    """``trl vllm-serve`` for ``model_dir`` over ``num_gpus`` GPUs (tensor x data parallel)."""
    rollout = cfg.rollout
    return [sys.executable, "-m", "trl.scripts.vllm_serve", "--model", model_dir,
            "--tensor_parallel_size", str(rollout.vllm_tensor_parallel_size),
            "--data_parallel_size", str(num_gpus // rollout.vllm_tensor_parallel_size),
            "--host", "127.0.0.1", "--port", str(rollout.vllm_server_port),
            "--gpu_memory_utilization", str(rollout.vllm_gpu_memory_utilization),
            "--max_model_len", str(rollout.max_prompt_length + rollout.max_completion_length),
            "--dtype", "bfloat16" if cfg.bf16 else "float32"]


@contextlib.contextmanager
def vllm_server(plan: RolloutPlan, cfg: GRPOStageConfig, model_dir: str) -> Iterator[None]:
    """Run the server of ``plan`` (if the stage starts one) for the duration of training.

    The trainer waits for it (``vllm_server_timeout``) and pushes updated weights to it.
    """
    if not plan.server_gpus:
        yield
        return
    cmd = vllm_server_command(cfg, model_dir, len(plan.server_gpus))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, plan.server_gpus)))
    log.info("starting vLLM server on GPU(s) %s: %s", plan.server_gpus, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        yield
    finally:
        if proc.poll() is None:  # the server and the engine workers it spawned (its own session)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.info("vLLM server stopped (exit %s)", proc.returncode)
