"""Runs the receiver on uvicorn with deadlines on reading each request, so a slow client cannot hold a connection.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`): a client that sends a request's head
or body a byte at a time keeps its connection, and a slot of the server's, for as long as it likes (a slowloris).
It has no read timeout to turn on, so `DeadlineProtocol` adds one at the layer that sees the bytes: a subclass of
uvicorn's httptools protocol (the one `http="auto"` picks; httptools comes with `uvicorn[standard]`) that

- arms a head deadline (`server.header_timeout_seconds`) when a connection opens or a request's head is still
  incomplete after the bytes that started it, and a body deadline (`server.body_timeout_seconds`) once the head
  is in and the body is not; the deadline is disarmed as soon as the request is complete, so the application's
  own work (waiting for the batch to reach Redis) is never timed;
- on expiry answers 408 with a JSON reason and closes (or only closes, when nothing of a request came, or when a
  response has already started); the application reading that body sees a disconnect.

Why there and not in the ASGI app: the app is called only when a head is complete, so it cannot see a slow head,
and an asyncio timeout around `receive()` would leave the connection to uvicorn. Why timers and not a sweep: a
timer per slow request costs nothing for a request that arrives whole in one read, which is the common case (the
deadline is armed only after a read leaves a request incomplete).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar, Literal

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.settings import ServerSettings

Phase = Literal["idle", "head", "body"]
TIMEOUT_BODY = orjson.dumps({"error": "request not received in time"})


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading a request's head and its body (module docstring)."""

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase = "idle"
        self._began = False  # a request started during the current read
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase: Phase | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("idle", self.header_timeout)  # a silent new connection is a head that never starts

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before, self._began = self._phase, False
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
        elif self._phase == "head":
            if self._deadline_phase != "idle":  # a new connection's head stays bounded from the connection's start
                self._arm("head", self.header_timeout)
        elif self._phase == "body":
            self._arm("body", self.body_timeout)
        elif self._began or before != "idle":
            self._disarm()  # the request is complete; the app's work on it is not timed
        elif self._deadline is None and self.timeout_keep_alive_task is None:
            self._arm("idle", self.header_timeout)  # bytes outside any request (CRLFs) cancelled the keep-alive

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._began = "head", True

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = "body"

    def on_message_complete(self) -> None:
        self._phase = "idle"
        super().on_message_complete()

    def _arm(self, phase: Phase, seconds: float) -> None:
        if self._deadline_phase == phase or seconds <= 0:
            return  # the running deadline already bounds this phase from its start
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)
        self._deadline_phase = phase

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_phase = None, None

    def _expired(self) -> None:
        phase, self._deadline, self._deadline_phase = self._phase, None, None
        cycle = self.cycle  # the request being read, or (before its head is in) the one before it
        if self.transport.is_closing():
            return
        if phase == "idle":
            if cycle is None or cycle.response_complete:
                self.transport.close()  # nothing of a request came: no answer owed
        elif phase == "head":
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # a pipelined head is late: finish the response in progress, then close
            else:
                self._answer_408()
        elif self.pipeline or cycle.response_started:
            self.transport.close()  # an answer is on the wire already (or one before this request still is)
        else:
            cycle.disconnected = True  # the app reading this body gets `http.disconnect`; its answer goes nowhere
            cycle.message_event.set()
            self._answer_408()

    def _answer_408(self) -> None:
        head = [b"HTTP/1.1 408 Request Timeout\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + TIMEOUT_BODY)
        self.transport.close()


def deadline_protocol(settings: ServerSettings) -> type[DeadlineProtocol]:
    """`DeadlineProtocol` with the deadlines of `settings` (uvicorn builds protocols from a class, not an instance)."""
    return type(
        "ReceiverProtocol",
        (DeadlineProtocol,),
        {"header_timeout": settings.header_timeout_seconds, "body_timeout": settings.body_timeout_seconds},
    )


def build_server(app: Any, settings: ServerSettings, host: str, port: int) -> uvicorn.Server:
    """The uvicorn server keytrail runs (`serve`, `up`): the receiver's app, deadlines on reads, no access log."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=deadline_protocol(settings),
        ws="none",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return uvicorn.Server(config)


def serve(server: uvicorn.Server) -> None:
    """Serve until Ctrl-C or SIGTERM. uvicorn re-raises the signal after its graceful shutdown; that is the normal
    end here (as in `uvicorn.run`), not an interruption."""
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
