"""Who holds something shared (a staging folder, a claim in the teacher's cache), and whether
that holder is certainly gone: a process of this host that no longer runs. A holder on another
host cannot be checked; what it holds runs out by age instead (each user says how long)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any


def record() -> dict[str, Any]:
    """This process, as a holder: its host and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def gone(holder: Mapping[str, Any]) -> bool:
    """True when ``holder`` (a :func:`record`) was a process of this host that has ended."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
