"""Child processes: the environment they are given, and stopping one started in its own session
(``start_new_session=True``) together with everything it spawned: a vLLM server and its engine
workers, a test's emulator or server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def environ_snapshot() -> dict[str, str]:
    """``os.environ`` as a plain dict, safe while another thread sets or unsets variables.

    ``dict(os.environ)``, ``{**os.environ}`` and ``os.environ.items()`` list the names, then look
    each one up: a variable unset in between raises ``KeyError``. MLflow does that on import: its
    telemetry client unsets ``_MLFLOW_TELEMETRY_SESSION_ID`` from a background thread once its
    config fetch ends (offline: fails), which crashed a GRPO stage while it redacted its params."""
    return {name: value for name in list(os.environ) if (value := os.environ.get(name)) is not None}


def interpreter_environ() -> dict[str, str]:
    """:func:`environ_snapshot` with this interpreter's bin folder first on ``PATH``, for a child
    that starts console scripts which must be the ones installed beside this interpreter
    (``mlflow models serve`` starts its scoring server as ``uvicorn``)."""
    env = environ_snapshot()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it if ``proc`` is still running after
    ``grace_s`` seconds. Nothing happens when ``proc`` has already exited."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
