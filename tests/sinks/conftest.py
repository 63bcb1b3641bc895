"""Fixtures for the sink tests: audit records, real rsyslog instances, and loopback HTTP servers for fake peers."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from rsyslog_harness import Certs, Rsyslog, Unavailable
from starlette.types import ASGIApp

from events.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity

_counter = itertools.count(1)


def _unavailable(reason: str) -> None:
    """Missing rsyslog skips locally; on CI (env CI set) it is a failure, so the tests cannot silently vanish."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this fails instead of skipping")
    pytest.skip(reason)


@pytest.fixture
def make_record() -> Callable[..., AuditRecord]:
    """Build an AuditRecord with unique ids; keyword arguments replace fields (`entity_name=` etc. for the entity)."""

    def make(**overrides: Any) -> AuditRecord:
        n = next(_counter)
        entity_fields = {
            k.removeprefix("entity_"): overrides.pop(k) for k in list(overrides) if k.startswith("entity_")
        }
        record = AuditRecord(
            record_id=f"rec-{n}",
            event_id=f"evt-{n}-{time.monotonic_ns()}",
            tenant="acme",
            topic="api-key.created",
            time="2026-01-02T03:04:05.123456Z",
            received_at="2026-01-02T03:04:06Z",
            activity_id=Activity.CREATE,
            severity_id=Severity.INFORMATIONAL,
            entity=Entity(
                type=EntityType.API_KEY,
                uid="fp_9c1d",
                name="billing key",
                fingerprint="9c1d2e3f" * 8,
                prefix="live_",
                last4="9f3a",
            ),
            project_id="proj_1",
            account_id="acct_1",
            actor=Actor(uid="user_42", type="user"),
            metadata={"product": "The Auth API", "version": "0.1.0"},
            raw_sha256="ab" * 32,
            raw_redacted={"key": "[redacted]", "name": "billing key"},
        )
        if entity_fields:
            record = replace(record, entity=replace(record.entity, **entity_fields))
        return replace(record, **overrides) if overrides else record

    return make


# --- real rsyslog ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    try:
        return Certs.generate(tmp_path_factory.mktemp("certs"))
    except Unavailable as exc:
        _unavailable(str(exc))
        raise


def _started(directory: Path, certs: Certs) -> Rsyslog:
    try:
        server = Rsyslog(directory, certs)
        server.start()
    except Unavailable as exc:
        _unavailable(str(exc))
        raise
    return server


@pytest.fixture(scope="session")
def rsyslog(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Rsyslog]:
    """One rsyslogd shared by the tests that only send to it."""
    server = _started(tmp_path_factory.mktemp("rsyslog"), certs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_rsyslog(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Rsyslog]:
    """An rsyslogd for one test module, so that module can count every message it received (junk included)."""
    server = _started(tmp_path_factory.mktemp("rsyslog"), certs)
    yield server
    server.stop()


@pytest.fixture
def private_rsyslog(tmp_path: Path, certs: Certs) -> Iterator[Rsyslog]:
    """An rsyslogd of the test's own, for tests that stop or restart it."""
    server = _started(tmp_path / "rsyslog", certs)
    yield server
    server.stop()


# --- loopback HTTP peers --------------------------------------------------------------------------------------


class LoopbackServer:
    """A real uvicorn server for `app` on 127.0.0.1 (a free port), in a thread, for the test's duration."""

    def __init__(self, app: ASGIApp) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, http="h11", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("loopback server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@pytest.fixture
def serve() -> Iterator[Callable[[ASGIApp], str]]:
    """`base_url = serve(app)`: run an ASGI app on loopback until the test ends."""
    servers: list[LoopbackServer] = []

    def start(app: ASGIApp) -> str:
        server = LoopbackServer(app)
        server.start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()
