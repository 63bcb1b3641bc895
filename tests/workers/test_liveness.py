"""Which workers are alive, by keytrail's liveness keys: `/readyz` when a queue with work has none; `status`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from harness import ServerThread, SettingsFactory, signed_headers, wait_until, write_config
from redis import Redis

from broker.queues import INGEST_QUEUE, consumers_key
from ingest.app import create_app
from keytrail.cli import main
from workers.guardian import Guardian
from workers.liveness import Liveness

ENVELOPE = {"id": "evt-live-0001", "topic": "api-key.created", "createdAt": "2026-11-28T10:00:00.000Z", "data": {}}


def test_readyz_is_503_while_a_queue_with_work_has_no_live_worker(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings(worker={"liveness_ttl_seconds": 0.5})
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/readyz").status_code == 200  # no work, nobody needed
        posted = client.post("/hooks/theauthapi/acme", content=json.dumps(ENVELOPE), headers=signed_headers())
        assert posted.status_code == 202

        stalled = client.get("/readyz")
        assert stalled.status_code == 503
        assert stalled.json()["status"] == "stalled"
        assert stalled.json()["unserved_queues"] == [INGEST_QUEUE]
        assert "queue ingest has 1 jobs waiting and no live worker" in stalled.json()["reason"]

        # A worker of another queue does not serve this one.
        Liveness(redis, "deliver-worker", ttl_seconds=settings.worker.liveness_ttl_seconds, queue="deliver").beat()
        assert client.get("/readyz").status_code == 503

        consumer = Guardian(redis, "ingest-worker", settings, queue=INGEST_QUEUE)
        consumer.start()
        try:
            assert wait_until(lambda: client.get("/readyz").status_code == 200, timeout=5)
        finally:
            consumer.stop()  # a clean stop: its liveness key goes at once
        assert client.get("/readyz").status_code == 503

        # A killed worker deletes nothing: its last heartbeat lapses after the liveness TTL.
        Liveness(redis, "killed-worker", ttl_seconds=settings.worker.liveness_ttl_seconds, queue=INGEST_QUEUE).beat()
        assert client.get("/readyz").status_code == 200
        assert wait_until(lambda: client.get("/readyz").status_code == 503, timeout=10)


def _ingest_workers(config: Path, capsys: pytest.CaptureFixture[str]) -> int:
    assert main(["--config", str(config), "status", "--format", "json"]) == 0
    queues = json.loads(capsys.readouterr().out)["queues"]
    return int(next(row["workers"] for row in queues if row["queue"] == INGEST_QUEUE))


def test_status_counts_only_live_workers(tmp_path: Path, redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "[worker]\nliveness_ttl_seconds = 1.0\n")
    command = [sys.executable, "-m", "keytrail", "--config", str(config), "worker", "--queue", INGEST_QUEUE]
    workers = [subprocess.Popen(command, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        assert wait_until(lambda: _ingest_workers(config, capsys) == 2, timeout=20, interval=0.3)
        workers[0].send_signal(signal.SIGKILL)  # no clean-up: RQ's registry keeps this worker for minutes
        workers[0].wait(timeout=10)
        assert wait_until(lambda: _ingest_workers(config, capsys) == 1, timeout=15, interval=0.3)
        # The live worker's recovery pass forgets the dead one, so the consumer set does not grow with restarts.
        assert wait_until(lambda: redis.scard(consumers_key(INGEST_QUEUE)) == 1, timeout=10)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=20)
    assert wait_until(lambda: _ingest_workers(config, capsys) == 0, timeout=10, interval=0.3)
