"""Real file-system failures for tests: a full disk and a folder nobody may write.

Both make the kernel refuse the write, so the code under test meets the error a user meets:

* :func:`full_disk`: a tiny ``tmpfs`` mounted on the folder (ENOSPC once it is full). Mounting
  needs CAP_SYS_ADMIN (root here; the test is skipped, saying why, where it is not allowed).
  :func:`file_size_limit` is the unprivileged alternative for one child process (EFBIG: the
  kernel's RLIMIT_FSIZE).
* :func:`unwritable`: ``chmod 0555`` for an ordinary user (EACCES). Root ignores permission
  bits, so as root the folder becomes a read-only bind mount of itself (EROFS) or, where
  mounting is not allowed, immutable (``chattr +i``: EPERM); skipped when neither works.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "256k") -> Iterator[Path]:
    """``folder`` on a ``size`` tmpfs; yields it (unmounted afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or not _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("full disk: cannot mount a tiny tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


def file_size_limit(limit_bytes: int):
    """``preexec_fn`` of a child process whose files may not grow past ``limit_bytes``: writes
    beyond fail with EFBIG ("File too large") instead of killing it with SIGXFSZ."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[str]:
    """``folder`` (created if needed) refusing writes; yields how (``EACCES``, ``EROFS``, ``EPERM``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "EACCES"
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("mount") and _run("mount", "--bind", str(folder), str(folder)):
        if _run("mount", "-o", "remount,bind,ro", str(folder)):
            try:
                yield "EROFS"
            finally:
                _run("umount", "-l", str(folder))
            return
        _run("umount", "-l", str(folder))
    if shutil.which("chattr") and _run("chattr", "+i", str(folder)):
        try:
            yield "EPERM"
        finally:
            _run("chattr", "-i", str(folder))
        return
    pytest.skip("permission denied: as root, needs a read-only bind mount or chattr +i, neither allowed here")
