"""A stand-in for the Kubeflow Pipelines REST API (v2beta1) on 127.0.0.1 that records what
``kfp.Client`` sends; there is no cluster here, so submit/schedule are checked at the wire."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from tests.http_servers import BackgroundServer


class FakeKfpApi(BackgroundServer):
    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, payload: dict, status: int = 200):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                path = urlparse(self.path).path
                api.requests.append((self.command, path, body))
                if path.endswith("/healthz"):
                    return self._reply({"multi_user": False})
                if path.endswith("/experiments") and self.command == "GET":
                    return self._reply({"experiments": [], "total_size": 0})
                if path.endswith("/experiments") and self.command == "POST":
                    return self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
                if path.endswith("/runs") and self.command == "POST":
                    return self._reply({"run_id": "run-1", "display_name": body.get("display_name")})
                if path.endswith("/recurringruns") and self.command == "POST":
                    return self._reply({"recurring_run_id": "rr-1", "display_name": body.get("display_name")})
                return self._reply({"error": f"unexpected {self.command} {path}"}, 404)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


    def posted(self, suffix: str) -> list[dict]:
        return [body for method, path, body in self.requests if method == "POST" and path.endswith(suffix)]
