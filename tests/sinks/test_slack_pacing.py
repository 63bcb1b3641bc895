"""Slack pacing shared through Redis: worker processes together stay under Slack's per-webhook limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from harness import REDIS_URL, free_port, wait_until
from redis import Redis
from rq import Queue, Worker
from rsyslog_harness import Certs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from stores_fixtures import make_record

from broker.queues import DELIVER_QUEUE
from config import load_settings
from config.errors import ConfigError
from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from sinks.base import Outcome
from sinks.errors import SinkUnavailable
from sinks.http import build_client
from sinks.slack import SlackSink
from workers.jobs import enqueue_deliveries
from workers.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "XXXXpacedSECRETtoken"
MIN_GAP = 0.9  # Slack allows about one message per second per webhook; closer than this is answered 429


class PacedSlack:
    """Incoming webhooks that enforce Slack's rate limit: a message closer than MIN_GAP to the last accepted one on
    the same webhook is answered `429 rate_limited` with Retry-After. `script` forces the next answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rate_limited = 0
        self.requests = 0
        self.script: list[tuple[int, str, dict[str, str]]] = []
        self._last: dict[str, float] = {}
        self.app = Starlette(routes=[Route("/services/{team}/{bot}/{token}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> PlainTextResponse:
        await request.body()
        self.requests += 1
        if self.script:
            status, text, headers = self.script.pop(0)
            return PlainTextResponse(text, status_code=status, headers=headers)
        hook, now = request.url.path, time.monotonic()
        if now - self._last.get(hook, float("-inf")) < MIN_GAP:
            self.rate_limited += 1
            return PlainTextResponse("rate_limited", status_code=429, headers={"Retry-After": "1"})
        self._last[hook] = now
        self.accepted += 1
        return PlainTextResponse("ok")


class HttpsServer:
    """`app` served over TLS on 127.0.0.1 (the webhook URL must be https://), in a thread."""

    def __init__(self, app: Any, certs: Certs) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            ssl_certfile=str(certs.server_cert),
            ssl_keyfile=str(certs.server_key),
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> HttpsServer:
        self.thread.start()
        if not wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=10):
            raise RuntimeError("Slack test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def slack(certs: Certs) -> Iterator[tuple[PacedSlack, str]]:
    fake = PacedSlack()
    with HttpsServer(fake.app, certs) as server:
        yield fake, f"{server.url}/services/T1/B1/{TOKEN}"


@pytest.fixture
def sinks(certs: Certs, slack: tuple[PacedSlack, str]) -> Iterator[Callable[..., SlackSink]]:
    """`sinks(url, redis=..., **kwargs)`: a Slack sink trusting the test CA, sharing pacing through `redis` (closed
    before the server stops, which would otherwise wait for their keep-alive connections)."""
    clients: list[httpx.Client] = []

    def make(url: str, redis: Redis | None = None, **kwargs: Any) -> SlackSink:
        clients.append(build_client(5.0, ca_file=str(certs.ca)))
        sink = SlackSink("alerts", Secret(url), client=clients[-1], **kwargs)
        if redis is not None:
            sink.use_redis(redis)
        return sink

    yield make
    for client in clients:
        client.close()


# --- one Redis, several sinks (each stands for a worker process) --------------------------------------------------


def test_a_second_process_waits_for_the_shared_turn_and_hands_back_what_is_too_far(
    sinks: Callable[..., SlackSink], slack: tuple[PacedSlack, str], redis: Redis
) -> None:
    fake, url = slack
    first = sinks(url, redis, min_interval=60.0)
    second = sinks(url, redis, min_interval=60.0, max_wait=0.5)
    record = make_record(1)
    assert first.send([record]).outcomes == {record.record_id: Outcome.DELIVERED}
    with pytest.raises(SinkUnavailable) as caught:
        second.send([make_record(2), make_record(3)])
    assert caught.value.retry_after is not None
    assert 50 < caught.value.retry_after <= 60
    assert fake.requests == 1


def test_a_429_seen_by_one_process_pauses_every_process_on_that_webhook(
    sinks: Callable[..., SlackSink], slack: tuple[PacedSlack, str], redis: Redis
) -> None:
    fake, url = slack
    first = sinks(url, redis, min_interval=0.01)
    second = sinks(url, redis, min_interval=0.01, max_wait=0.5)
    fake.script.append((429, "rate_limited", {"Retry-After": "30"}))
    with pytest.raises(SinkUnavailable):
        first.send([make_record(1)])
    with pytest.raises(SinkUnavailable) as caught:
        second.send([make_record(2)])
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 25
    assert fake.requests == 1


def test_the_bucket_key_is_a_hash_of_the_webhook_never_the_url(
    sinks: Callable[..., SlackSink], slack: tuple[PacedSlack, str], redis: Redis
) -> None:
    _, url = slack
    sinks(url, redis).send([make_record(1)])
    keys = [key.decode() for key in redis.keys("*")]
    assert len(keys) == 1
    assert keys[0].startswith("keytrail:pace:slack:")
    assert not any(TOKEN in key or "127.0.0.1" in key for key in keys)
    assert all(TOKEN.encode() not in (redis.get(key) or b"") for key in keys)


def test_pacing_options_and_their_problems_one_line_each() -> None:
    url = Secret("https://hooks.slack.com/services/T/B/x")
    built = SlackSink.from_settings(SinkSettings(name="alerts", type="slack", options={"webhook_url": url}))
    built.close()
    assert (built.burst, built.max_wait, built.shared_pacing) == (1, 30.0, True)
    bad = {"webhook_url": url, "burst": 0, "max_wait": -1, "shared_pacing": "yes"}
    with pytest.raises(ConfigError) as caught:
        SlackSink.from_settings(SinkSettings(name="alerts", type="slack", options=bad))
    problems = caught.value.problems
    assert len(problems) == 3
    for key in ("burst", "max_wait", "shared_pacing"):
        assert sum(problem.startswith(f"sinks.alerts.{key}:") for problem in problems) == 1


# --- two real worker processes --------------------------------------------------------------------------------


def _store_and_enqueue(runtime: Runtime, records: list[AuditRecord]) -> None:
    result = runtime.store.append(records, runtime.route)
    enqueue_deliveries(runtime.deliver_queue, result.pending, runtime.settings.worker)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-bucket", "per-process"])
def test_two_deliver_workers_together_stay_under_slacks_limit(
    tmp_path: Path, certs: Certs, slack: tuple[PacedSlack, str], redis: Redis, shared: bool
) -> None:
    fake, url = slack
    config = tmp_path / "keytrail.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nlog_level = "warning"\n[redis]\nurl = "{REDIS_URL}"\n'
        f'[audit]\nurl = "sqlite:///{tmp_path / "data" / "audit.db"}"\n'
        f'[tenants.acme]\ntoken = "test-token-0123456789abcdef"\n'
        f'[[sinks]]\nname = "slack"\ntype = "slack"\nwebhook_url = "{url}"\n'
        f"shared_pacing = {'true' if shared else 'false'}\n"
    )
    settings = load_settings(config, {})
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYTRAIL_")}
    env |= {"PYTHONPATH": str(ROOT), "SSL_CERT_FILE": str(certs.ca)}  # the workers trust the test CA
    command = [sys.executable, "-m", "keytrail", "--config", str(config), "worker", "--queue", "deliver"]
    workers = [subprocess.Popen(command, cwd=ROOT, env=env) for _ in range(2)]
    runtime = Runtime.open(settings, redis)
    deliver_queue = Queue(DELIVER_QUEUE, connection=redis)
    try:
        assert wait_until(lambda: Worker.count(queue=deliver_queue) == 2, timeout=20, interval=0.1)
        # One deliver job takes the first five and posts them; five more arrive meanwhile and go to the other
        # worker (the first one's are leased): two processes post to one webhook at the same time.
        _store_and_enqueue(runtime, [make_record(n) for n in range(5)])
        assert wait_until(lambda: fake.accepted >= 1, timeout=15)
        _store_and_enqueue(runtime, [make_record(n) for n in range(5, 10)])
        if shared:
            delivered = wait_until(
                lambda: runtime.store.count_deliveries().get("slack") == {"delivered": 10}, timeout=25, interval=0.2
            )
            assert delivered, runtime.store.count_deliveries()
            assert (fake.accepted, fake.rate_limited) == (10, 0)
        else:
            # Each process paces only itself: together they post faster than Slack allows.
            assert wait_until(lambda: fake.rate_limited > 0, timeout=15)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
        runtime.close()
