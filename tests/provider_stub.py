"""A minimal, independent OpenAI-compatible HTTP server that replays canned replies.

Built on the standard library's http.server in a thread, with the chunked framing written by
hand, and sharing no code with routing_sidecar.providers.fake_server: the adapters are checked
against bytes written independently of our own fake, copied from the providers' documented
examples. Each request takes the next queued `StubReply` (or a 500 when none is left) and is
recorded as (path, headers, parsed body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StubReply:
    """One canned response: a whole JSON body, or SSE frames sent one chunk each."""

    status: int = 200
    body: Any = None
    sse: list[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay_s: float = 0.0


@dataclass
class StubRequest:
    """What the stub received."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stub: ProviderStub  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test output is not the place for an access log

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in self.headers.items()}  # names are case-insensitive
        self.stub.received.append(StubRequest(self.path, headers, body))
        reply = self.stub.next_reply()
        if reply.sse is not None:
            self._send_sse(reply)
        else:
            self._send_json(reply)

    def _send_json(self, reply: StubReply) -> None:
        payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _send_sse(self, reply: StubReply) -> None:
        assert reply.sse is not None
        self.send_response(reply.status)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            for frame in reply.sse:
                if reply.chunk_delay_s:
                    time.sleep(reply.chunk_delay_s)
                data = frame.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.stub.disconnects += 1


class ProviderStub:
    """Start with `start()`, queue replies with `push()`, read `received`, `stop()` at the end."""

    def __init__(self) -> None:
        self.replies: deque[StubReply] = deque()
        self.received: list[StubRequest] = []
        self.disconnects = 0
        handler = type("StubHandler", (_Handler,), {"stub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ProviderStub:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def push(self, *replies: StubReply) -> None:
        """Queue replies, answered in order."""
        self.replies.extend(replies)

    def next_reply(self) -> StubReply:
        """The next queued reply, or a 500 saying the test queued too few."""
        if self.replies:
            return self.replies.popleft()
        return StubReply(500, {"error": {"message": "stub: no reply queued",
                                         "type": "server_error"}})


def data(obj: Any) -> str:
    """One SSE frame carrying a JSON (or literal) data line."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
