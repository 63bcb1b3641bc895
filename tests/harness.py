"""Test harness shared by the test modules: loopback servers, polling with a bound, the test tenant's secrets."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import uvicorn

from config import Settings

# A database of its own: other suites on this Redis use others. KT_TEST_REDIS_URL lets two runs share a Redis
# (not KEYTRAIL_*: the config loader reads those as settings).
REDIS_URL = os.environ.get("KT_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
TOKEN = "test-token-0123456789abcdef"
SIGNING_SECRET = "whsec-test-signing-secret"

SettingsFactory = Callable[..., Settings]


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


def write_config(directory: Path, body: str = "", *, redis_url: str = REDIS_URL) -> Path:
    """`directory/keytrail.toml`: data dir, Redis and a SQLite audit store under `directory`, then `body`."""
    config = directory / "keytrail.toml"
    config.write_text(
        f'data_dir = "{directory / "data"}"\n[redis]\nurl = "{redis_url}"\n'
        f'[audit]\nurl = "sqlite:///{directory / "data" / "audit.db"}"\n' + body
    )
    return config


def drain(settings: Settings) -> None:
    """Run both queues' workers in burst mode: everything queued is normalized, stored and delivered."""
    from broker.queues import DELIVER_QUEUE, INGEST_QUEUE
    from workers.runner import run_worker

    run_worker(settings, INGEST_QUEUE, burst=True)
    run_worker(settings, DELIVER_QUEUE, burst=True)


def start_fake_authapi(stack: ExitStack, access_key: str, account: str, projects: Sequence[str], **options: Any) -> Any:
    """The fake The Auth API on loopback, seeded with one account and its projects; stopped with `stack`."""
    from authapi.fake import FakeAuthApi, FakeState

    fake = stack.enter_context(FakeAuthApi(FakeState(**options)))
    fake.state.seed(access_key, account, list(projects))
    return fake
