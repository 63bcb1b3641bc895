"""The whole loop: the fake Auth API delivers real webhooks to the real receiver; real workers store the records."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import REDIS_URL, ServerThread, drain, free_port, wait_until, write_config
from redis import Redis

from audit.stores import RecordQuery, open_store
from authapi.fake import FakeAuthApi, FakeState
from broker.queues import DELIVER_QUEUE
from config import Settings, load_settings
from events.records import Activity, EntityType
from ingest.app import create_app
from keytrail.cli import main
from workers.runner import run_worker

ACCESS_KEY = "live_access_looptestaccesskey000001"
TOKEN = "loop-test-token-0123456789"


@pytest.fixture
def loop(tmp_path: Path, redis: Redis) -> Iterator[tuple[Settings, Path, FakeAuthApi]]:
    with FakeAuthApi(FakeState(bare_entity=False)) as fake:
        fake.state.seed(ACCESS_KEY, "acct-1", ["proj-1"])
        receiver_port = free_port()
        config = write_config(tmp_path, loop_config(tmp_path, fake.url, receiver_port))
        settings = load_settings(config, {})
        with ServerThread(create_app(settings), port=receiver_port):
            yield settings, config, fake


def loop_config(tmp_path: Path, authapi_url: str, receiver_port: int) -> str:
    """Tenant `acme` subscribed through the fake at `authapi_url`, delivering to a receiver on `receiver_port`."""
    return (
        f'[authapi]\nbase_url = "{authapi_url}"\n'
        f'[tenants.acme]\ntoken = "{TOKEN}"\naccess_key = "{ACCESS_KEY}"\naccount_id = "acct-1"\n'
        f'project_ids = ["proj-1"]\npublic_url = "http://127.0.0.1:{receiver_port}"\n'
        f'[[sinks]]\nname = "archive"\ntype = "file"\npath = "{tmp_path / "out.jsonl"}"\n'
    )


def test_key_lifecycle_in_the_fake_becomes_audit_records(
    loop: tuple[Settings, Path, FakeAuthApi], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, config, fake = loop
    assert main(["--config", str(config), "subscribe", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pings"][0]["seen"] is True

    api = httpx.Client(base_url=fake.url, headers={"x-api-key": ACCESS_KEY})
    created = api.post("/api-keys", json={"name": "checkout", "projectId": "proj-1"}).json()
    rotated = api.post(f"/api-keys/{created['key']}/rotate").json()
    assert api.delete(f"/api-keys/{rotated['key']}").status_code == 200
    api.close()
    assert fake.state.wait_for_deliveries(timeout=15)
    drain(settings)

    store = open_store(settings.audit.url)
    try:
        records = [r for _, r in store.search(RecordQuery(tenant="acme", limit=100, oldest_first=True))]
    finally:
        store.close()
    by_topic: dict[str, list[object]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)
    assert len(by_topic["api-key.created"]) == 2  # the new key, then its rotated successor
    assert len(by_topic["api-key.deleted"]) == 2  # the rotated-out key, then the successor
    everything = json.dumps([r.to_dict() for r in records])
    for raw in (created["key"], rotated["key"], ACCESS_KEY):
        assert raw not in everything
    for record in records:
        assert record.entity.type is EntityType.API_KEY
        assert str(record.entity.fingerprint).startswith("fp_")
        assert record.project_id == "proj-1"
    deleted = [r for r in records if r.topic == "api-key.deleted"]
    assert all(r.activity_id is Activity.DELETE for r in deleted)
    assert {r.entity.last4 for r in deleted} == {created["key"][-4:], rotated["key"][-4:]}


def test_redeliveries_from_the_fake_make_one_record_each(tmp_path: Path, redis: Redis) -> None:
    state = FakeState(duplicates_every=1, out_of_order=True)
    with FakeAuthApi(state) as fake:
        fake.state.seed(ACCESS_KEY, "acct-1", ["proj-1"])
        port = free_port()
        config = write_config(tmp_path, loop_config(tmp_path, fake.url, port))
        settings = load_settings(config, {})
        with ServerThread(create_app(settings), port=port):
            assert main(["--config", str(config), "subscribe", "--no-ping", "--format", "json"]) == 0
            with httpx.Client(base_url=fake.url, headers={"x-api-key": ACCESS_KEY}) as api:
                for index in range(4):
                    api.post("/api-keys", json={"name": f"k{index}", "projectId": "proj-1"})
            assert fake.state.wait_for_deliveries(timeout=15)
            accepted = [d for d in fake.state.deliveries if d.status == 202]
            assert len(accepted) > 4  # the fake did redeliver: 202 each time
            drain(settings)
    assert wait_until((tmp_path / "out.jsonl").exists, timeout=5)
    shipped = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(shipped) == 4
    assert len({s["event_id"] for s in shipped}) == 4


def test_scheduled_drift_check_runs_in_a_worker_and_logs_an_alert(
    loop: tuple[Settings, Path, FakeAuthApi], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, config, fake = loop
    assert main(["--config", str(config), "subscribe", "--no-ping", "--format", "json"]) == 0
    hook = fake.state.webhooks_in()[0]
    fake.state.pause_webhook(hook["id"])  # someone paused keytrail's subscription in the dashboard
    capsys.readouterr()

    from config.logging import configure_logging
    from workers.scheduling import schedule_drift_check

    configure_logging("info", json=True, stream=sys.stdout)
    redis = Redis.from_url(REDIS_URL)
    schedule_drift_check(redis, "test-guardian", settings)
    schedule_drift_check(redis, "another-worker", settings)  # one check per interval, not one per worker
    redis.close()
    run_worker(settings, DELIVER_QUEUE, burst=True)

    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "subscription_drift" in line]
    assert len(alerts) == 1
    assert alerts[0]["tenant"] == "acme"
    assert "paused" in json.dumps(alerts[0]["problems"])
