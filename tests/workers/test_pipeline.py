"""End to end through real Redis and real RQ workers: receiver → normalize → audit store → sinks."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import REDIS_URL, ServerThread, SettingsFactory, drain, signed_headers, wait_until
from redis import Redis

from audit.stores import DeliveryState, RecordQuery, open_store
from config import Settings
from config.logging import configure_logging
from ingest.app import create_app
from keytrail.simulation import TOPICS, make_delivery

PLUGINS = str(Path(__file__).parent.parent / "plugins")


@pytest.fixture
def receiver_for(redis: Redis) -> Iterator[object]:
    servers: list[ServerThread] = []
    clients: list[httpx.Client] = []

    def start(settings: Settings) -> httpx.Client:
        server = ServerThread(create_app(settings)).__enter__()
        servers.append(server)
        clients.append(httpx.Client(base_url=server.url, timeout=10))
        return clients[-1]

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.__exit__(None, None, None)


def send_all(client: httpx.Client, settings: Settings, *, bare: bool = False) -> list[str]:
    secrets = []
    for index, topic in enumerate(TOPICS):
        delivery = make_delivery(settings.tenants["acme"], topic, bare=bare and index % 2 == 1)
        response = client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers)
        assert response.status_code == 202, response.text
        if delivery.secret:
            secrets.append(delivery.secret)
    return secrets


def stored(settings: Settings) -> list[dict[str, object]]:
    store = open_store(settings.audit.url)
    try:
        return [record.to_dict() for _, record in store.search(RecordQuery(limit=1000))]
    finally:
        store.close()


def test_every_topic_is_stored_and_shipped_without_any_raw_key(
    make_settings: SettingsFactory, receiver_for: object, redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings()
    logs = io.StringIO()
    configure_logging("debug", json=True, stream=logs)
    client = receiver_for(settings)  # type: ignore[operator]
    secrets = send_all(client, settings) + send_all(client, settings, bare=True)
    drain(settings)

    records = stored(settings)
    assert len(records) == 2 * len(TOPICS)
    topics = {r["topic"] for r in records}
    assert set(TOPICS) <= topics
    shipped = (tmp_path / "out" / "audit.jsonl").read_text()
    assert len(shipped.splitlines()) == len(records)
    everything = [
        shipped,
        (tmp_path / "data" / "audit.db").read_bytes().decode("latin-1"),
        logs.getvalue(),
        b"".join(redis.dump(k) or b"" for k in redis.keys("*")).decode("latin-1"),
    ]
    assert secrets
    for secret in secrets:
        for place in everything:
            assert secret not in place
            assert secret[8:30] not in place


def test_duplicate_delivery_creates_one_record_and_one_shipment(
    make_settings: SettingsFactory, receiver_for: object, redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings()
    client = receiver_for(settings)  # type: ignore[operator]
    delivery = make_delivery(settings.tenants["acme"], "api-key.updated")
    for _ in range(3):
        assert client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers).status_code == 202
    drain(settings)
    assert client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers).status_code == 202
    drain(settings)

    assert len(stored(settings)) == 1
    assert len((tmp_path / "out" / "audit.jsonl").read_text().splitlines()) == 1


def test_two_updates_of_one_bare_project_are_two_records(
    make_settings: SettingsFactory, receiver_for: object, redis: Redis
) -> None:
    settings = make_settings()
    client = receiver_for(settings)  # type: ignore[operator]
    project = {"id": "p-1", "name": "Shop", "accountId": "a-1", "env": "live", "updatedAt": "2026-11-28T10:00:00Z"}
    for name in ("Shop", "Shop EU"):
        body = json.dumps({**project, "name": name}).encode()
        assert client.post("/hooks/theauthapi/acme", content=body, headers=signed_headers()).status_code == 202
    drain(settings)
    records = stored(settings)
    assert sorted(r["entity"]["name"] for r in records) == ["Shop", "Shop EU"]  # type: ignore[index]
    assert {r["entity"]["type"] for r in records} == {"Project"}  # type: ignore[index]


def test_records_are_hash_chained_per_tenant(
    make_settings: SettingsFactory, receiver_for: object, redis: Redis
) -> None:
    settings = make_settings()
    client = receiver_for(settings)  # type: ignore[operator]
    send_all(client, settings)
    drain(settings)
    chain = sorted(stored(settings), key=lambda r: str(r["received_at"]))
    store = open_store(settings.audit.url)
    try:
        ordered = [record for _, record in store.search(RecordQuery(limit=100, oldest_first=True))]
    finally:
        store.close()
    assert ordered[0].prev_hash == "0" * 64
    for previous, current in itertools.pairwise(ordered):
        assert current.prev_hash == previous.hash
        assert current.chained(previous.hash).hash == current.hash
    assert len(chain) == len(ordered)


def test_a_down_sink_retries_without_delaying_the_other(
    make_settings: SettingsFactory, receiver_for: object, redis: Redis, tmp_path: Path
) -> None:
    switch = tmp_path / "down"
    switch.write_text("down")
    flaky_out = tmp_path / "flaky.jsonl"
    sys.path.insert(0, PLUGINS)
    try:
        settings = make_settings(
            sinks=[
                {"name": "archive", "type": "file", "path": str(tmp_path / "out" / "audit.jsonl")},
                {"name": "flaky", "type": "flaky_sinks:SwitchSink", "path": str(flaky_out), "switch": str(switch)},
            ]
        )
        client = receiver_for(settings)  # type: ignore[operator]
        send_all(client, settings)
        drain(settings)
        # The healthy sink has everything at once; the down one has nothing and a retry scheduled.
        assert len((tmp_path / "out" / "audit.jsonl").read_text().splitlines()) == len(TOPICS)
        assert not flaky_out.exists()
        store = open_store(settings.audit.url)
        record_id = store.search(RecordQuery(limit=1))[0][1].record_id
        states = {d.sink: d.state for d in store.deliveries(record_id)}
        # Owed: retrying (attempted) or pending (held back while the sink backs off, not attempted).
        assert states["archive"] is DeliveryState.DELIVERED
        assert states["flaky"] in (DeliveryState.RETRYING, DeliveryState.PENDING)

        switch.unlink()  # the peer recovers
        assert wait_until(lambda: (drain(settings), flaky_out.exists())[1], timeout=15, interval=0.5)
        delivered = [json.loads(line)["event_id"] for line in flaky_out.read_text().splitlines()]
        assert len(delivered) == len(set(delivered)) == len(TOPICS)
        assert {d.sink: d.state for d in store.deliveries(record_id)}["flaky"] is DeliveryState.DELIVERED
        store.close()
        # Delivered once to the healthy sink, never again.
        assert len((tmp_path / "out" / "audit.jsonl").read_text().splitlines()) == len(TOPICS)
    finally:
        sys.path.remove(PLUGINS)


def test_worker_killed_mid_job_loses_nothing(
    make_settings: SettingsFactory, receiver_for: object, redis: Redis, tmp_path: Path
) -> None:
    stalled = tmp_path / "stalled"
    out = tmp_path / "stall.jsonl"
    config = tmp_path / "keytrail.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / "data"}"
[redis]
url = "{REDIS_URL}"
[audit]
url = "sqlite:///{tmp_path / "data" / "audit.db"}"
[worker]
recovery_interval_seconds = 0.5
liveness_ttl_seconds = 2.0
[tenants.acme]
token = "{signed_headers()["x-keytrail-token"]}"
signing_secrets = ["{signed_headers()["theauthapi-signature"]}"]
[[sinks]]
name = "stall"
type = "flaky_sinks:StallOnceSink"
path = "{out}"
switch = "{stalled}"
"""
    )
    settings = make_settings(
        sinks=[{"name": "stall", "type": "flaky_sinks:StallOnceSink", "path": str(out), "switch": str(stalled)}],
        worker={"recovery_interval_seconds": 0.5, "liveness_ttl_seconds": 2.0},
    )
    client = receiver_for(settings)  # type: ignore[operator]
    send_all(client, settings)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "keytrail", "--config", str(config), "worker", "--queue"]
    ingest = subprocess.Popen([*command, "ingest", "--burst"], env=env)
    assert ingest.wait(timeout=60) == 0
    first = subprocess.Popen([*command, "deliver"], env=env)
    try:
        assert wait_until(stalled.exists, timeout=30), "the deliver job never started"
        first.send_signal(signal.SIGKILL)  # mid-job: the sink is stalled inside send()
        first.wait(timeout=10)
        assert not out.exists()
        second = subprocess.Popen([*command, "deliver"], env=env)
        try:
            assert wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= len(TOPICS), timeout=30), (
                "the abandoned delivery was not recovered"
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    delivered = {json.loads(line)["event_id"] for line in out.read_text().splitlines()}
    assert len(delivered) == len(TOPICS)
    assert len(stored(settings)) == len(TOPICS)
