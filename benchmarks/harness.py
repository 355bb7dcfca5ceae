"""Timing and result files shared by every benchmark."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("SIDREASONER_BENCH_DIR", "build/bench"))


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Fastest wall time of ``repeat`` calls (seconds) and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``build/bench/<name>.json`` with the measurements, the machine and the time."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"benchmark": name, "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(),
              "machine": machine(), **result}
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path
