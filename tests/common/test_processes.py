"""Child processes: the environment handed to them, and stopping a process group (SIGTERM first,
SIGKILL after the grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import MutableMapping

import pytest

from components.common.logs import redact
from components.common.processes import environ_snapshot, interpreter_environ, stop_process_group


def test_a_process_group_is_terminated_and_a_stubborn_one_killed():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stop_process_group(polite, grace_s=10)
    assert polite.returncode == -signal.SIGTERM
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)\n"
                                 "time.sleep(60)"], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    stop_process_group(stubborn, grace_s=0.5)
    assert stubborn.returncode == -signal.SIGKILL
    stop_process_group(stubborn, grace_s=0.5)  # already gone: nothing to do


class _UnsetWhileListed(MutableMapping):
    """A mapping like ``os.environ`` (``os._Environ`` is a ``MutableMapping`` over a dict) in which
    ``GONE`` is listed but unset before it is read, as a variable that another thread unsets
    between the two steps (MLflow's telemetry thread does, on import)."""

    def __init__(self, **values: str):
        self.values = values

    def __iter__(self):
        return iter([*self.values, "GONE"])

    def __getitem__(self, name):
        return self.values[name]

    def __len__(self):
        return len(self.values) + 1

    def __setitem__(self, name, value):
        self.values[name] = value

    def __delitem__(self, name):
        del self.values[name]


def test_the_environment_snapshot_skips_a_variable_unset_while_it_is_read(monkeypatch):
    environ = _UnsetWhileListed(PATH="/bin", TEACHER_API_KEY="sk-secret-value")
    with pytest.raises(KeyError):
        dict(environ.items())  # what dict(os.environ), {**os.environ} and .items() do: list, then look up
    monkeypatch.setattr(os, "environ", environ)
    assert environ_snapshot() == {"PATH": "/bin", "TEACHER_API_KEY": "sk-secret-value"}
    assert redact("key sk-secret-value") == "key ***"  # redaction reads the environment on every log line


def test_the_interpreter_environment_puts_this_interpreters_scripts_first(monkeypatch):
    monkeypatch.setattr(os, "environ", _UnsetWhileListed(PATH="/bin", HOME="/root"))
    env = interpreter_environ()
    assert env == {"PATH": os.pathsep.join([os.path.dirname(sys.executable), "/bin"]), "HOME": "/root"}
