"""Shared fixtures: a real Redis database per test, settings built from dicts, servers on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from redis import Redis
from redis.exceptions import RedisError

from config import Settings, settings_from_mapping

REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of its own: other suites on this Redis use others
TOKEN = "test-token-0123456789abcdef"
SIGNING_SECRET = "whsec-test-signing-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerThread:
    """An ASGI app served by uvicorn on a free 127.0.0.1 port in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def redis() -> Iterator[Redis]:
    connection = Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except RedisError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and does not answer at {REDIS_URL}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for one test: tenant `acme` (token + signing secret), SQLite and a file sink under tmp_path."""

    def make(**overrides: Any) -> Settings:
        data: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "redis": {"url": REDIS_URL, "autostart": False},
            "audit": {"url": f"sqlite:///{tmp_path / 'data' / 'audit.db'}"},
            "worker": {"backoff_base_seconds": 1.0, "backoff_ceiling_seconds": 2.0, "recovery_interval_seconds": 0.5},
            "tenants": {"acme": {"token": TOKEN, "signing_secrets": [SIGNING_SECRET]}},
            "sinks": [{"name": "archive", "type": "file", "path": str(tmp_path / "out" / "audit.jsonl")}],
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return settings_from_mapping(data, {})

    return make


def signed_headers(**extra: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-keytrail-token": TOKEN,
        "theauthapi-signature": SIGNING_SECRET,
        **extra,
    }


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes (a bound, never an assertion about speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
