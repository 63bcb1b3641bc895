"""Deliver jobs lease what they send: several workers never send a record twice, and a dead job's lease runs out."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from fakes.hec import FakeHec
from harness import REDIS_URL, SettingsFactory, drain, wait_until
from redis import Redis
from rq import Queue
from stores_fixtures import make_record, pg_url_fixture  # noqa: F401 - fixture

from audit.stores import AuditStore, DeliveryState, open_store
from broker.queues import INGEST_QUEUE, NORMALIZE_JOB, JobSerializer
from config import Settings
from workers.jobs import enqueue_deliveries
from workers.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
HEC_TOKEN = "11111111-2222-3333-4444-555555555555"
EVENTS = 1000


@pytest.fixture
def hec() -> Iterator[FakeHec]:
    with FakeHec(tokens=[HEC_TOKEN], counting=True) as fake:
        yield fake


def accepted_events(count: int) -> list[dict[str, str]]:
    """What the receiver enqueues for `count` signed deliveries (bodies already redacted: they hold no key)."""
    events = []
    for n in range(count):
        body = json.dumps({"id": f"evt-{n:08d}", "topic": "project.updated", "data": {"id": f"p-{n}", "name": "x"}})
        events.append(
            {
                "tenant": "acme",
                "event_key": f"evt-{n:08d}",
                "topic": "project.updated",
                "received_at": "2026-11-28T10:00:00.000Z",
                "raw_sha256": hashlib.sha256(body.encode()).hexdigest(),
                "body": body,
            }
        )
    return events


def preload(redis: Redis, events: list[dict[str, str]], batch: int = 50) -> None:
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JobSerializer)
    for start in range(0, len(events), batch):
        queue.enqueue(NORMALIZE_JOB, events[start : start + batch], result_ttl=0)


def all_delivered(store: AuditStore, expected: int) -> bool:
    return store.count_deliveries().get("splunk", {}) == {"delivered": expected}


@pytest.mark.postgres
def test_two_worker_supervisors_send_each_record_to_hec_once(
    tmp_path: Path, pg_url: str, hec: FakeHec, redis: Redis
) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nlog_level = "warning"\n[redis]\nurl = "{REDIS_URL}"\n'
        f'[audit]\nurl = "{pg_url}"\n[tenants.acme]\ntoken = "test-token-0123456789abcdef"\n'
        f'[[sinks]]\nname = "splunk"\ntype = "splunk_hec"\nurl = "{hec.url}"\ntoken = "{HEC_TOKEN}"\n'
    )
    preload(redis, accepted_events(EVENTS))
    command = [sys.executable, "-m", "keytrail", "--config", str(config), "worker"]
    # The config file says everything: no KEYTRAIL_* variable of the test run leaks into the workers' settings.
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYTRAIL_")}
    env["PYTHONPATH"] = str(ROOT)
    supervisors = [subprocess.Popen(command, cwd=ROOT, env=env) for _ in range(2)]
    store = open_store(pg_url)
    try:
        assert wait_until(lambda: all_delivered(store, EVENTS), timeout=90, interval=0.2), store.count_deliveries()
    finally:
        store.close()
        # A warm shutdown lets a job that is still sending finish: every send is counted below.
        for supervisor in supervisors:
            supervisor.send_signal(signal.SIGTERM)
        for supervisor in supervisors:
            supervisor.wait(timeout=60)
    assert len(hec.event_ids) == EVENTS
    assert hec.event_count == EVENTS, f"{hec.duplicate_count} duplicates"


@pytest.fixture
def settings(make_settings: SettingsFactory, hec: FakeHec) -> Settings:
    return make_settings(
        sinks=[{"name": "splunk", "type": "splunk_hec", "url": hec.url, "token": HEC_TOKEN, "index": "main"}]
    )


def test_a_live_lease_holds_a_record_back_and_an_expired_one_is_sent_again(
    settings: Settings, hec: FakeHec, redis: Redis
) -> None:
    runtime = Runtime.open(settings, redis)
    store = runtime.store
    try:
        store.append([make_record(0)], runtime.route)
        # A deliver job claimed the record, then its worker died mid-send (SIGKILL, power cut) and the job is gone.
        taken = store.claim("splunk", ["rec_acme_000000"], limit=0, owner="job:killed", lease_seconds=3600)
        assert [r.record_id for r, _ in taken] == ["rec_acme_000000"]

        enqueue_deliveries(runtime.deliver_queue, {"splunk": ["rec_acme_000000"]}, settings.worker)
        drain(settings)
        assert hec.event_count == 0  # another job does not send what a live lease covers
        assert [d.state for d in store.deliveries("rec_acme_000000")] == [DeliveryState.PENDING]

        with closing(sqlite3.connect(settings.audit.url.removeprefix("sqlite:///"), isolation_level=None)) as db:
            db.execute("UPDATE deliveries SET lease_until = 0")  # the lease ran out
        enqueue_deliveries(runtime.deliver_queue, {"splunk": ["rec_acme_000000"]}, settings.worker)
        drain(settings)
        assert hec.event_ids == {"evt-0"}
        assert hec.event_count == 1
        assert [d.state for d in store.deliveries("rec_acme_000000")] == [DeliveryState.DELIVERED]
    finally:
        runtime.close()
