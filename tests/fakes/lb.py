"""A round-robin HTTP load balancer on 127.0.0.1: the LB in front of several fake HEC indexers in keytrail's tests.

It routes each request on its own, as an application load balancer does (not each connection):

    with FakeHec(ack_tokens=[t]) as one, FakeHec(ack_tokens=[t]) as two, RoundRobinProxy([one.url, two.url]) as lb:
        sink = SplunkHecSink("splunk", lb.url, Secret(t), ack=True)

- `sticky=True` (AWS ALB/ELB duration-based stickiness, Splunk's advice for HEC with indexer acks): every answer
  sets the cookie `cookie` (default `AWSALB`) naming, opaquely, the backend that served it; a request that sends a
  known value back goes to that backend. A request without it (or with an unknown value) goes round-robin.
- `sticky=False`: no cookie is set or read; every request goes to the next backend in turn.

`routes` records, per request, the path, the backend index and whether the stickiness cookie came back.
Not emulated: cookie expiry, health checks, TLS.
"""

from __future__ import annotations

import http.client
import itertools
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)


@dataclass(frozen=True, slots=True)
class Routed:
    """One request the LB forwarded: its path (without the query), the backend index, and whether the client sent
    the stickiness cookie back."""

    path: str
    backend: int
    cookie_sent: bool


class RoundRobinProxy:
    """See the module docstring. Thread-safe to inspect."""

    def __init__(self, backends: Sequence[str], *, sticky: bool = True, cookie: str = "AWSALB") -> None:
        self.backends = [urlsplit(url) for url in backends]
        self.sticky = sticky
        self.cookie = cookie
        # Opaque per-backend values, as an ALB's are; the client can only hand them back.
        self._values = [secrets.token_hex(16) for _ in backends]
        self._turn = itertools.cycle(range(len(backends)))
        self._lock = threading.Lock()
        self._routes: list[Routed] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy has not been started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def routes(self) -> list[Routed]:
        with self._lock:
            return list(self._routes)

    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the clients it serves
            timeout = 5.0

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _choose(self, cookie_header: str | None) -> tuple[int, bool]:
        sent: str | None = None
        if self.sticky and cookie_header:
            try:
                jar = SimpleCookie(cookie_header)
            except CookieError:
                jar = SimpleCookie()
            if self.cookie in jar:
                sent = jar[self.cookie].value
        with self._lock:
            if sent in self._values:
                return self._values.index(sent), True
            return next(self._turn), False

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        index, cookie_sent = self._choose(handler.headers.get("Cookie"))
        with self._lock:
            self._routes.append(Routed(urlsplit(handler.path).path, index, cookie_sent))
        backend = self.backends[index]
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "cookie"}}
        connection = http.client.HTTPConnection(backend.hostname or "127.0.0.1", backend.port, timeout=10.0)
        try:
            connection.request(handler.command, handler.path, body=body, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
            status, answer_headers = answer.status, answer.getheaders()
        except OSError:
            status, answer_headers, payload = 502, [("Content-Type", "text/plain")], b"bad gateway"
        finally:
            connection.close()
        handler.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        if self.sticky:
            handler.send_header("Set-Cookie", f"{self.cookie}={self._values[index]}; Path=/")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
