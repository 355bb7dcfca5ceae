"""Stopping a child process started in its own session (``start_new_session=True``) together
with everything it spawned: a vLLM server and its engine workers, a test's emulator or server."""

from __future__ import annotations

import os
import signal
import subprocess


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
