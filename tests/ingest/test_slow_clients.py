"""Slow clients against the receiver as `keytrail serve` runs it: a late head or body gets 408, others are served."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from harness import SettingsFactory, free_port, signed_headers, wait_until
from redis import Redis

from config import Settings
from ingest.app import create_app
from ingest.server import build_server

ENVELOPE = {"id": "evt-slow-0001", "topic": "api-key.created", "createdAt": "2026-11-28T10:00:00.000Z", "data": {}}
TRICKLERS = 20
HEAD = b"POST /hooks/theauthapi/acme HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture
def receiver(make_settings: SettingsFactory, redis: Redis) -> Iterator[str]:
    """`keytrail serve`'s server (ingest/server.py) on loopback, with deadlines short enough for a test."""
    settings: Settings = make_settings(server={"header_timeout_seconds": 1.0, "body_timeout_seconds": 1.5})
    port = free_port()
    server = build_server(create_app(settings), settings.server, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout=10), "the receiver did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _watch(open_sockets: dict[socket.socket, bytes], trickle: set[socket.socket], bound: float) -> None:
    """Until every socket is closed by the server (or `bound` seconds pass): read what arrives, and send one more
    header byte every 0.2 s on the sockets in `trickle` that have not been answered."""
    deadline = time.monotonic() + bound
    while any(not data.endswith(b"<closed>") for data in open_sockets.values()) and time.monotonic() < deadline:
        live = [sock for sock, data in open_sockets.items() if not data.endswith(b"<closed>")]
        readable, _, _ = select.select(live, [], [], 0.2)
        for sock in readable:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            open_sockets[sock] += chunk if chunk else b"<closed>"
        for sock in trickle:
            if not open_sockets[sock]:
                try:
                    sock.sendall(b"X")  # one byte of a header name that never ends
                except OSError:
                    open_sockets[sock] += b"<closed>"


def test_slow_heads_and_bodies_get_408_and_others_are_served(receiver: str) -> None:
    trickling = [_connect(receiver) for _ in range(TRICKLERS)]
    for sock in trickling:
        sock.sendall(HEAD)
    partial_body = _connect(receiver)
    body = json.dumps(ENVELOPE).encode()
    head = {**signed_headers(), "content-length": str(len(body)), "host": "127.0.0.1"}
    partial_body.sendall(
        b"POST /hooks/theauthapi/acme HTTP/1.1\r\n"
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in head.items())
        + b"\r\n"
        + body[:10]
    )
    silent = _connect(receiver)
    # A keep-alive connection: one whole request answered, then the next request's head trickles.
    second = _connect(receiver)
    second.sendall(
        b"POST /hooks/theauthapi/acme HTTP/1.1\r\n"
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in head.items())
        + b"\r\n"
        + body
    )
    first_answer = second.recv(4096)
    second.sendall(HEAD)
    trickling.append(second)
    everyone = [*trickling, partial_body, silent]
    seen: dict[socket.socket, bytes] = dict.fromkeys(everyone, b"")
    try:
        with httpx.Client(base_url=receiver, timeout=5) as client:
            served = client.post("/hooks/theauthapi/acme", content=body, headers=signed_headers())
            _watch(seen, set(trickling), bound=15)
            served_after = client.post("/hooks/theauthapi/acme", content=body, headers=signed_headers())
    finally:
        for sock in everyone:
            sock.close()

    assert first_answer.startswith(b"HTTP/1.1 202 ")
    assert served.status_code == 202  # while 23 slow connections were open
    assert served_after.status_code == 202
    assert all(data.endswith(b"<closed>") for data in seen.values()), "a slow client kept its connection"
    answered = [seen[sock] for sock in trickling if seen[sock] != b"<closed>"]
    # A byte sent as the server closed can come back as a reset instead of the answer; most see the 408.
    print(f"{len(answered)} of {len(trickling)} trickling clients read the 408 before the close")
    assert len(answered) >= len(trickling) // 2
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in answered)
    assert seen[partial_body].startswith(b"HTTP/1.1 408 ")
    assert b'{"error":"request not received in time"}' in seen[partial_body]
    assert seen[silent] == b"<closed>"  # nothing of a request came: closed without an answer
