"""A local OpenAI-compatible teacher on 127.0.0.1 (stdlib ``ThreadingHTTPServer``) with fault
injection, for the teacher corpus tests and ``benchmarks/bench_teacher.py``.

``POST /v1/chat/completions`` answers every request after ``latency`` seconds. By default the
answer is a well-behaved teacher's (:func:`echo_sids`); a test passes its own ``respond`` to make
outputs that leak the target or invent SIDs. Transport faults are queued with :meth:`inject` and
hit the next requests in arrival order:

* ``429``: status 429 with ``Retry-After``; ``500`` / ``503``: a server error;
* ``slow``: the normal answer, but only after ``delay`` seconds (past the client's timeout);
* ``malformed``: status 200 with a body that is not JSON; ``empty``: 200 with an empty message;
* ``400``: the request is refused (e.g. too long); ``401``: the API key is refused (and
  quoted in the error message, as some providers do).

Every request is recorded (messages, fault, Authorization header, arrival time), and so is the
largest number of requests in flight at once. ``GET /stats`` returns the
counts, so a process that runs the server in a subprocess (``python -m tests.teacher_server``)
can check them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from components.common.sid import find_sids
from tests.http_servers import BackgroundServer

Responder = Callable[[list[dict[str, str]]], str | None]
FAULTS = ("429", "500", "503", "slow", "malformed", "empty", "400", "401")

FILLER = ("This answer comes from the local test teacher. It is deliberately long enough to pass the "
          "length checks of every enrichment step, and it names items only by their codes.")


def echo_sids(messages: list[dict[str, str]]) -> str:
    """A valid answer to every enrichment step: filler, then each SID of the prompt once, in
    order of first appearance. The item narrative names its SID; the reasoning path names the
    history (the prompt gives the target only by title); the user narrative recites the history
    and ends with the target SID, which its prompt mentions last."""
    prompt = "\n".join(m["content"] for m in messages)
    unique = list(dict.fromkeys(find_sids(prompt, 3)))
    return FILLER + (" The items, in order: " + ", then ".join(unique) if unique else "")


@dataclass
class Request:
    ordinal: int
    messages: list[dict[str, str]]
    fault: str | None
    authorization: str | None
    body: dict[str, Any]
    received: float
    """time.monotonic() at arrival."""


class TeacherServer(BackgroundServer):
    """``with TeacherServer(latency=0.2) as server: ... server.url`` (the ``/v1`` base URL)."""

    def __init__(self, respond: Responder | None = None, latency: float = 0.0):
        self.respond, self.latency = respond, latency
        self.requests: list[Request] = []
        self._faults: deque[tuple[str, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "teacher", "object": "model"}]}).encode())
                elif self.path.rstrip("/").endswith("/stats"):
                    self._send(200, json.dumps(teacher.counts()).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fault, opts = teacher._record(body, self.headers.get("Authorization"))
                try:
                    self._answer(body, fault, opts)
                finally:
                    with teacher._lock:
                        teacher.in_flight -= 1

            def _answer(self, body: dict[str, Any], fault: str | None, opts: dict[str, Any]) -> None:
                time.sleep(teacher.latency)
                if fault == "429":
                    self._send(429, b'{"error": {"message": "rate limited (injected)", "type": "rate_limit"}}',
                               {"Retry-After": str(opts.get("retry_after", 1))})
                    return
                if fault in ("500", "503"):
                    self._send(int(fault), b'{"error": {"message": "server error (injected)"}}')
                    return
                if fault == "400":
                    self._send(400, b'{"error": {"message": "request refused (injected)", "type": "invalid_request_error"}}')
                    return
                if fault == "401":  # like providers that quote the key they refuse
                    token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                    self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {token}",
                                                          "type": "invalid_request_error"}}).encode())
                    return
                if fault == "malformed":
                    self._send(200, b'{"id": "x", "choices": [ this is not json')
                    return
                if fault == "slow":
                    time.sleep(opts.get("delay", 5.0))
                messages = body.get("messages", [])
                text = "" if fault == "empty" else teacher.answer(messages)
                prompt_chars = sum(len(m.get("content") or "") for m in messages)
                self._send(200, json.dumps({
                    "id": f"chatcmpl-{len(teacher.requests)}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "teacher"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(text) // 4 + 1,
                              "total_tokens": prompt_chars // 4 + len(text) // 4 + 2},
                }).encode())

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # many clients connect at once; the default backlog is 5

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up waiting
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/v1"

    def answer(self, messages: list[dict[str, str]]) -> str:
        text = self.respond(messages) if self.respond else None
        return echo_sids(messages) if text is None else text

    def inject(self, fault: str, count: int = 1, **options: Any) -> None:
        """Queue ``fault`` for the next ``count`` requests (after faults already queued)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        with self._lock:
            self._faults.extend([(fault, options)] * count)

    def _record(self, body: dict[str, Any], authorization: str | None) -> tuple[str | None, dict[str, Any]]:
        with self._lock:
            fault, opts = self._faults.popleft() if self._faults else (None, {})
            self.requests.append(Request(len(self.requests), body.get("messages", []), fault, authorization, body,
                                         time.monotonic()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return fault, opts

    def counts(self) -> dict[str, Any]:
        with self._lock:
            faults: dict[str, int] = {}
            for r in self.requests:
                if r.fault:
                    faults[r.fault] = faults.get(r.fault, 0) + 1
            return {"requests": len(self.requests), "faults": faults}


def main(argv: list[str] | None = None) -> int:
    """Serve in this process until killed; prints the base URL on the first line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    server = TeacherServer(latency=args.latency)
    print(server.base, flush=True)
    try:
        server.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
