"""The lifetime of the tests' in-process HTTP servers (fault proxy, fake KFP API, teacher)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class BackgroundServer:
    """A context manager serving ``self.server`` on a daemon thread until the block ends.

    Subclasses create ``self.server`` in ``__init__``."""

    server: ThreadingHTTPServer

    def __enter__(self) -> Self:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
