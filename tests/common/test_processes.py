"""Stopping a child's process group: SIGTERM first, SIGKILL after the grace period."""

from __future__ import annotations

import signal
import subprocess
import sys

from components.common.processes import stop_process_group


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
