"""Fault-injecting HTTP reverse proxies for tests, in front of a real server on 127.0.0.1.

* :class:`FaultyProxy` answers the first N matching requests with an error instead of
  forwarding them (``fail_first=10**9``: a storage service that is down).
* :class:`PreconditionProxy` adds what gcp-storage-emulator lacks (STACK.md): GCS's
  ``ifGenerationMatch`` preconditions, checked against the emulator's own generations and
  applied atomically with the write (412 when they fail, as GCS answers).
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

from tests.http_servers import BackgroundServer

Response = tuple[int, list[tuple[str, str]], bytes]


class FaultyProxy(BackgroundServer):
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
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                status, reply_headers, data = proxy.handle(self.command, self.path, headers, body)
                self.send_response(status)
                for key, value in reply_headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up waiting
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, command: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        """Answer one request: an injected fault, or the target's answer."""
        with self._lock:
            fail = self.fail_left > 0 and self.match in path
            if fail:
                self.fail_left -= 1
                self.failed.append(f"{command} {path}")
            else:
                self.forwarded.append(f"{command} {path}")
        if fail:
            payload = b'{"error": {"code": %d, "message": "injected fault"}}' % self.status
            return self.status, [("Content-Type", "application/json")], payload
        return self.forward(command, path, headers, body)

    def forward(self, command: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=60)
        try:
            conn.request(command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = [(k, v) for k, v in resp.getheaders()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")]
            return resp.status, kept, data
        finally:
            conn.close()


_OBJECT_PATH = re.compile(r"^/(?:download/)?storage/v1/b/([^/]+)/o/([^/?]+)")
#: A copy's precondition is on its destination: ``.../o/<source>/rewriteTo/b/<bucket>/o/<name>``.
_COPY_PATH = re.compile(r"/(?:rewriteTo|copyTo)/b/([^/]+)/o/([^/?]+)")
_UPLOAD_PATH = re.compile(r"^/upload/storage/v1/b/([^/]+)/o")


class PreconditionProxy(FaultyProxy):
    """The emulator behind GCS's generation preconditions: a request carrying
    ``ifGenerationMatch`` is checked and forwarded under one lock (0: the object must not
    exist), so two clients racing on one object see what a real bucket would show them."""

    def __init__(self, target: str):
        super().__init__(target)
        self._conditional = threading.Lock()
        self.refused: list[str] = []

    def handle(self, command: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        query = parse_qs(urlparse(path).query)
        if "ifGenerationMatch" not in query:
            return super().handle(command, path, headers, body)
        expected = int(query["ifGenerationMatch"][0])
        bucket, name = self._object(path, query, headers, body)
        with self._conditional:
            current = self._generation(bucket, name)
            if current != expected:
                self.refused.append(f"{command} {name}: generation {current}, expected {expected}")
                payload = json.dumps({"error": {"code": 412, "message": "conditionNotMet"}}).encode()
                return 412, [("Content-Type", "application/json")], payload
            return super().handle(command, path, headers, body)

    @staticmethod
    def _object(path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes) -> tuple[str, str]:
        route = urlparse(path).path
        upload = _UPLOAD_PATH.match(route)
        if upload:
            if "name" in query:
                return upload.group(1), query["name"][0]
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {headers.get('Content-Type', headers.get('content-type', ''))}\r\n\r\n".encode() + body)
            metadata = json.loads(next(message.iter_parts()).get_content())  # multipart: metadata first
            return upload.group(1), metadata["name"]
        match = _COPY_PATH.search(route) or _OBJECT_PATH.match(route)
        if not match:
            raise ValueError(f"a precondition on a request this proxy does not know: {path}")
        return match.group(1), unquote(match.group(2))

    def _generation(self, bucket: str, name: str) -> int:
        status, _, data = self.forward("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}", {}, b"")
        if status == 404:
            return 0
        return int(json.loads(data)["generation"])
