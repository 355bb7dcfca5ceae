"""Where GRPO rollouts are generated: HF ``generate`` in the training processes (CPU), vLLM
colocated with training, or a ``trl vllm-serve`` server on GPUs of its own.

The trainer code is the same for all three; only GRPOConfig's ``use_vllm`` / ``vllm_mode`` /
``vllm_server_base_url`` differ. In server mode without a configured URL the stage starts the
server itself on its first ``rollout.server.tensor_parallel_size`` GPUs and trains on the
remaining ones.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from components.common import hardware
from components.common.config import ConfigError
from components.common.processes import environ_snapshot, stop_process_group
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
    server = rollout.server
    if server.base_url is not None:
        return RolloutPlan(engine="vllm", vllm_mode="server", server_url=server.base_url,
                           train_gpus=list(range(gpus)))
    if server.tensor_parallel_size >= gpus:
        raise ConfigError(f"{prefix}.rollout.server.tensor_parallel_size: {server.tensor_parallel_size} GPU(s) for "
                          f"the vLLM server leaves none of the {gpus} visible GPU(s) for training")
    return RolloutPlan(engine="vllm", vllm_mode="server", server_url=f"http://127.0.0.1:{server.port}",
                       server_gpus=list(range(server.tensor_parallel_size)),
                       train_gpus=list(range(server.tensor_parallel_size, gpus)))


def vllm_server_command(cfg: GRPOStageConfig, model_dir: str) -> list[str]:
    """``trl vllm-serve`` for ``model_dir``: one tensor-parallel group over the server's GPUs, its
    own memory share (RolloutConfig.server). No data parallelism: TRL 1.16's vllm-serve refuses it
    for dense models."""
    rollout = cfg.rollout
    return [sys.executable, "-m", "trl.scripts.vllm_serve", "--model", model_dir,
            "--tensor_parallel_size", str(rollout.server.tensor_parallel_size), "--data_parallel_size", "1",
            "--host", "127.0.0.1", "--port", str(rollout.server.port),
            "--gpu_memory_utilization", str(rollout.server.gpu_memory_utilization),
            "--max_model_len", str(rollout.max_prompt_length + rollout.max_completion_length),
            "--dtype", "bfloat16" if cfg.bf16 else "float32"]


@contextlib.contextmanager
def vllm_server(plan: RolloutPlan, cfg: GRPOStageConfig, model_dir: str) -> Iterator[None]:
    """Run the server of ``plan`` (if the stage starts one) for the duration of training.

    The trainer waits for it (``rollout.server.timeout``) and pushes updated weights to it.
    """
    if not plan.server_gpus:
        yield
        return
    cmd = vllm_server_command(cfg, model_dir)
    env = dict(environ_snapshot(), CUDA_VISIBLE_DEVICES=hardware.cuda_visible_devices(plan.server_gpus))
    log.info("starting vLLM server on GPU(s) %s: %s", plan.server_gpus, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        yield
    finally:
        stop_process_group(proc, grace_s=60)  # the server and the engine workers it spawned (its own session)
        log.info("vLLM server stopped (exit %s)", proc.returncode)
