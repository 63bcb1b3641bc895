"""End to end into a Splunk HEC peer: signed POSTs → real RQ workers → audit store → the HEC fake (loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes.hec import FakeHec
from harness import ServerThread, SettingsFactory, drain, wait_until
from redis import Redis

from audit.stores import DeliveryState, RecordQuery, open_store
from config import Settings
from ingest.app import create_app
from keytrail.simulation import TOPICS, make_delivery

HEC_TOKEN = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def hec() -> Iterator[FakeHec]:
    with FakeHec(tokens=[HEC_TOKEN]) as fake:
        yield fake


@pytest.fixture
def settings(make_settings: SettingsFactory, hec: FakeHec, tmp_path: Path) -> Settings:
    return make_settings(
        sinks=[
            {"name": "archive", "type": "file", "path": str(tmp_path / "out" / "audit.jsonl")},
            {"name": "splunk", "type": "splunk_hec", "url": hec.url, "token": HEC_TOKEN, "index": "security"},
        ]
    )


def post_all(settings: Settings) -> list[str]:
    secrets: list[str] = []
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        for topic in TOPICS:
            delivery = make_delivery(settings.tenants["acme"], topic)
            response = client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers)
            assert response.status_code == 202
            if delivery.secret:
                secrets.append(delivery.secret)
    return secrets


def test_signed_post_reaches_the_store_and_hec_with_event_id_and_no_raw_key(
    settings: Settings, hec: FakeHec, redis: Redis
) -> None:
    secrets = post_all(settings)
    drain(settings)

    store = open_store(settings.audit.url)
    records = [r for _, r in store.search(RecordQuery(limit=100))]
    store.close()
    assert len(records) == len(TOPICS)
    assert {e["fields"]["event_id"] for e in hec.events} == {r.event_id for r in records}
    assert all(e["index"] == "security" and e["fields"]["tenant"] == "acme" for e in hec.events)
    wire = json.dumps(hec.events)
    assert secrets
    for secret in secrets:
        assert secret not in wire


def test_hec_busy_then_recovering_delivers_everything_once_to_the_store(
    settings: Settings, hec: FakeHec, redis: Redis
) -> None:
    hec.enqueue(503, code=9, times=2, headers={"Retry-After": "1"})
    post_all(settings)
    drain(settings)
    store = open_store(settings.audit.url)
    try:
        # At least the first attempt hit the busy indexer: not everything is in HEC yet.
        assert len(hec.event_ids) < len(TOPICS)
        assert wait_until(lambda: (drain(settings), len(hec.event_ids) == len(TOPICS))[1], timeout=20, interval=0.5)
        records = [r for _, r in store.search(RecordQuery(limit=100))]
        assert len(records) == len(TOPICS)  # once in the store, however often HEC saw it
        assert hec.event_ids == {r.event_id for r in records}
        for record in records:
            states = {d.sink: d.state for d in store.deliveries(record.record_id)}
            assert states == {"archive": DeliveryState.DELIVERED, "splunk": DeliveryState.DELIVERED}
    finally:
        store.close()


def test_hec_token_revoked_keeps_records_and_retries(settings: Settings, hec: FakeHec, redis: Redis) -> None:
    hec.enqueue(403, code=4, times=1000)
    post_all(settings)
    drain(settings)
    store = open_store(settings.audit.url)
    try:
        records = [r for _, r in store.search(RecordQuery(limit=100))]
        states = {d.state for r in records for d in store.deliveries(r.record_id) if d.sink == "splunk"}
        assert states <= {DeliveryState.RETRYING, DeliveryState.PENDING}
        assert DeliveryState.DEAD not in states
        assert hec.event_ids == set()
    finally:
        store.close()
