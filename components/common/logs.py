"""Logging for every stage: one format, periodic progress lines, and secret redaction.

Progress is logged as plain lines (not a redrawn bar) because stage output ends up in KFP pod
logs and CI logs, where carriage returns are noise.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from components.common.processes import environ_snapshot

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_MIN_SECRET_LEN = 6


_REGISTERED: set[str] = set()


def register_secret(value: str) -> None:
    """Redact ``value`` too, whatever the name of the variable it came from (e.g. an API key
    read from an environment variable named in config)."""
    if len(value) >= _MIN_SECRET_LEN:
        _REGISTERED.add(value)


def secret_values() -> list[str]:
    """Values of environment variables whose name looks secret (API keys, tokens), and the
    values passed to :func:`register_secret`."""
    return sorted(
        {v for k, v in environ_snapshot().items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
        | _REGISTERED,
        key=len,
        reverse=True,
    )


def redact(text: str) -> str:
    """Replace every secret environment value in ``text`` by ``***``."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def redact_values(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, text) with every secret removed from its text."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {key: redact_values(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [redact_values(value) for value in obj]
    return obj


class RedactSecrets(logging.Filter):
    """Logging filter that scrubs secret environment values from every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


#: The format kfp's executor (``kfp.dsl.executor_main``) gives the root logger before our code runs.
KFP_EXECUTOR_FORMAT = "[KFP Executor "


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once per process (idempotent; a second call only points our
    handler at the current ``sys.stderr``, which a caller may have replaced since).

    Inside a kfp task, the executor has already attached its own handler to the root logger:
    it is replaced, so that every record is printed once, in one format, redacted."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        fmt = getattr(handler.formatter, "_fmt", None) or ""
        if fmt.startswith(KFP_EXECUTOR_FORMAT):
            root.removeHandler(handler)
    ours = [h for h in root.handlers if any(isinstance(f, RedactSecrets) for f in h.filters)]
    if ours:
        for handler in ours:
            if isinstance(handler, logging.StreamHandler) and handler.stream is not sys.stderr:
                with handler.lock:  # not setStream: it flushes the old stream, which may be closed
                    handler.stream = sys.stderr
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "LiteLLM", "urllib3", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Periodic progress log line with throughput and ETA.

    >>> progress = Progress(log, "embedding", total=len(items), unit="items")
    >>> for batch in batches: ...; progress.update(len(batch))
    >>> progress.close()
    """

    def __init__(self, logger: logging.Logger, what: str, total: int | None = None,
                 unit: str = "items", every: float = 10.0):
        self.logger, self.what, self.total, self.unit, self.every = logger, what, total, unit, every
        self.count = 0
        self.start = self.last = time.monotonic()
        self.detail = ""
        """Appended to each line (e.g. the latest training loss)."""

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.logger.info(self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        line = f"{self.what}: {self.count:,}"
        if self.total:
            line += f"/{self.total:,} ({100 * self.count / self.total:.0f}%)"
        line += f" {self.unit}, {rate:,.1f} {self.unit}/s, elapsed {_duration(elapsed)}"
        if self.total and rate > 0:
            line += f", ETA {_duration((self.total - self.count) / rate)}"
        return f"{line}, {self.detail}" if self.detail else line

    def close(self) -> None:
        self.logger.info(self._line(time.monotonic()) + " (done)")
