"""A 202 survives a Redis crash: acknowledged events are in the AOF and reach the audit store after a restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import ServerThread, SettingsFactory, free_port, wait_until
from redis import Redis
from redis.exceptions import RedisError

from audit.stores import RecordQuery, open_store
from broker.queues import DELIVER_QUEUE, INGEST_QUEUE
from ingest.app import create_app
from keytrail.simulation import TOPICS, make_delivery
from workers.runner import run_worker

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")


class RedisServer:
    """A private redis-server with AOF, fsync on every write, on a free loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.dir = data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                "redis.log",
            ]
        )
        assert wait_until(self.answers, timeout=10), "redis-server did not start"

    def answers(self) -> bool:
        try:
            return bool(Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except RedisError:
            return False

    def crash(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_acknowledged_events_survive_a_redis_crash(
    make_settings: SettingsFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = make_settings(redis={"url": redis_server.url})
    event_ids = []
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        for topic in TOPICS:
            delivery = make_delivery(settings.tenants["acme"], topic)
            response = client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers)
            assert response.status_code == 202
            event_ids.append(response.json()["event_id"])
        redis_server.crash()  # no shutdown, no save: only what the AOF already holds survives
        response = client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers)
        assert response.status_code == 503  # Redis down: a clear "retry later", never a 202 for a lost event
        assert "retry-after" in response.headers

    redis_server.start()
    run_worker(settings, INGEST_QUEUE, burst=True)
    run_worker(settings, DELIVER_QUEUE, burst=True)
    store = open_store(settings.audit.url)
    try:
        stored = {record.event_id for _, record in store.search(RecordQuery(limit=100))}
    finally:
        store.close()
    assert stored == set(event_ids)
    assert len((tmp_path / "out" / "audit.jsonl").read_text().splitlines()) == len(TOPICS)
