"""A fault-injecting HTTP reverse proxy for tests: forwards to a real server on 127.0.0.1 and
answers the first N matching requests with an error instead."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class FaultyProxy:
    """``with FaultyProxy(target_url, fail_first=2, status=503) as proxy: ... proxy.url``"""

    def __init__(self, target: str, fail_first: int = 0, status: int = 503, match: str = ""):
        self.target = urlparse(target)
        self.fail_left, self.status, self.match = fail_first, status, match
        self.failed: list[str] = []
        self.forwarded: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    fail = proxy.fail_left > 0 and proxy.match in self.path
                    if fail:
                        proxy.fail_left -= 1
                        proxy.failed.append(f"{self.command} {self.path}")
                    else:
                        proxy.forwarded.append(f"{self.command} {self.path}")
                if fail:
                    payload = b'{"error": {"code": %d, "message": "injected fault"}}' % proxy.status
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
