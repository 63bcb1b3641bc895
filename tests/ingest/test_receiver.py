"""The receiver over real HTTP on loopback, against a real Redis: what gets 202, what gets which 4xx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import SIGNING_SECRET, TOKEN, ServerThread, SettingsFactory, signed_headers
from redis import Redis
from rq import Queue

from broker.queues import INGEST_QUEUE, JOB_RETRY_MAX, JobSerializer, ping_key
from config import Settings
from config.datadir import pepper as load_pepper
from ingest.app import create_app

API_KEY = "live_Q2hhbmdlTWVQbGVhc2VJdHNBU2VjcmV0S2V5MDE"
ENVELOPE = {
    "id": "5b0c7e2e-8d1f-4b7e-9a55-0c1f2a3b4c5d",
    "topic": "api-key.created",
    "createdAt": "2026-11-28T10:00:00.000Z",
    "data": {"key": API_KEY, "name": "checkout", "env": "live", "projectId": "p-1"},
}


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(server={"max_body_bytes": 4096}, ingest={"batch_max_wait_ms": 1.0})


@pytest.fixture
def receiver(settings: Settings, redis: Redis) -> Iterator[httpx.Client]:
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def queued_events(redis: Redis) -> list[dict[str, object]]:
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JobSerializer)
    return [event for job in queue.jobs for event in job.args[0]]


def post(
    client: httpx.Client, body: bytes, headers: dict[str, str] | None = None, tenant: str = "acme"
) -> httpx.Response:
    return client.post(f"/hooks/theauthapi/{tenant}", content=body, headers=headers or signed_headers())


def test_verified_delivery_is_queued_before_202_and_carries_no_raw_key(receiver: httpx.Client, redis: Redis) -> None:
    response = post(receiver, json.dumps(ENVELOPE).encode())

    assert response.status_code == 202
    assert response.json() == {"event_id": ENVELOPE["id"]}
    events = queued_events(redis)
    assert [e["event_key"] for e in events] == [ENVELOPE["id"]]
    assert events[0]["topic"] == "api-key.created"
    # The raw key never reaches Redis (whose AOF is on disk): only its fingerprint does.
    dump = b"".join(redis.dump(key) or b"" for key in redis.keys("*"))
    assert API_KEY.encode() not in dump
    assert json.loads(str(events[0]["body"]))["data"]["key"]["last4"] == API_KEY[-4:]
    # A normalize job that raises (audit store unreachable) is retried by RQ, not dropped.
    job = Queue(INGEST_QUEUE, connection=redis, serializer=JobSerializer).jobs[0]
    assert job.retries_left == JOB_RETRY_MAX


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"x" * 5000, None, 413, "larger than"),
        (b"{}", {**signed_headers(), "content-type": "text/plain"}, 415, "application/json"),
        (
            b"{}",
            {k: v for k, v in signed_headers().items() if k != "x-keytrail-token"},
            401,
            "missing x-keytrail-token",
        ),
        (b"{}", signed_headers(**{"x-keytrail-token": "wrong"}), 401, "does not match"),
        (b"{}", signed_headers(**{"theauthapi-signature": "wrong"}), 401, "theauthapi-signature does not match"),
        (b"{not json", None, 400, "not valid JSON"),
        (b"[1, 2]", None, 400, "JSON object"),
        (b"\xff\xfe", None, 400, "not valid JSON"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_enqueues_nothing(
    receiver: httpx.Client, redis: Redis, body: bytes, headers: dict[str, str] | None, status: int, reason: str
) -> None:
    response = post(receiver, body, headers)

    assert response.status_code == status
    assert reason in response.json()["error"]
    assert queued_events(redis) == []


def test_unknown_tenant_is_404(receiver: httpx.Client, redis: Redis) -> None:
    response = post(receiver, b"{}", tenant="nobody")
    assert response.status_code == 404
    assert queued_events(redis) == []


def test_oversized_chunked_body_is_413_without_content_length(receiver: httpx.Client, redis: Redis) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    response = receiver.post("/hooks/theauthapi/acme", content=chunks(), headers=signed_headers())
    assert response.status_code == 413
    assert queued_events(redis) == []


@pytest.mark.parametrize("encoding", ["hex", "base64", "prefixed"])
def test_signature_may_be_an_hmac_of_the_body(receiver: httpx.Client, redis: Redis, encoding: str) -> None:
    body = json.dumps(ENVELOPE).encode()
    digest = hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).digest()
    value = {
        "hex": digest.hex(),
        "base64": base64.b64encode(digest).decode(),
        "prefixed": f"sha256={digest.hex()}",
    }[encoding]
    response = post(receiver, body, signed_headers(**{"theauthapi-signature": value}))
    assert response.status_code == 202


def test_hmac_of_other_bytes_is_rejected(receiver: httpx.Client) -> None:
    digest = hmac.new(SIGNING_SECRET.encode(), b"something else", hashlib.sha256).hexdigest()
    response = post(receiver, json.dumps(ENVELOPE).encode(), signed_headers(**{"theauthapi-signature": digest}))
    assert response.status_code == 401


def test_redelivery_is_accepted_again(receiver: httpx.Client, redis: Redis) -> None:
    body = json.dumps(ENVELOPE).encode()
    assert post(receiver, body).status_code == 202
    assert post(receiver, body).status_code == 202
    # Both are queued; the audit store keeps one record (see test_pipeline).
    assert [e["event_key"] for e in queued_events(redis)] == [ENVELOPE["id"]] * 2


def test_bare_entity_is_keyed_by_a_keyed_hmac_of_the_body(
    receiver: httpx.Client, redis: Redis, settings: Settings
) -> None:
    body = json.dumps(ENVELOPE["data"]).encode()
    response = post(receiver, body)
    assert response.status_code == 202
    keyed = hmac.new(load_pepper(settings), body, hashlib.sha256).hexdigest()
    # A plain SHA-256 of a body holding a short custom key lets anyone with the record guess the key offline.
    assert response.json()["event_id"] == keyed != hashlib.sha256(body).hexdigest()
    [event] = queued_events(redis)
    assert event["event_key"] == event["raw_sha256"] == keyed


def test_raw_sha256_is_keyed_by_the_pepper_and_stable_across_receivers_sharing_it(
    make_settings: SettingsFactory, redis: Redis, tmp_path: Path
) -> None:
    body = json.dumps({"name": "custom", "key": "4321", "projectId": "p-1"}).encode()
    keys = []
    for data_dir, pepper in (("one", "shared-pepper"), ("two", "shared-pepper"), ("three", "other-pepper")):
        settings = make_settings(data_dir=str(tmp_path / data_dir), audit={"pepper": pepper})
        with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
            assert post(client, body).status_code == 202
        keys.append(queued_events(redis)[-1])
    assert keys[0]["raw_sha256"] == keys[1]["raw_sha256"] == hmac.new(b"shared-pepper", body, "sha256").hexdigest()
    assert keys[0]["event_key"] == keys[1]["event_key"] != keys[2]["event_key"]
    assert keys[2]["raw_sha256"] != keys[0]["raw_sha256"]
    # The 4-digit custom key cannot be found by hashing guesses without the pepper.
    guesses = {hashlib.sha256(body.replace(b"4321", f"{n:04d}".encode())).hexdigest() for n in range(10000)}
    assert not guesses & {k["raw_sha256"] for k in keys}


def test_ping_is_recorded_and_not_enqueued(receiver: httpx.Client, redis: Redis) -> None:
    headers = {"content-type": "application/json", "x-keytrail-token": TOKEN}  # pings may come unsigned
    response = post(receiver, json.dumps({"keytrail_ping": "marker-123"}).encode(), headers)

    assert response.status_code == 200
    assert response.json() == {"ping": "marker-123"}
    assert redis.get(ping_key("acme", "marker-123")) is not None
    assert queued_events(redis) == []


def test_ping_with_wrong_token_is_401(receiver: httpx.Client, redis: Redis) -> None:
    headers = {"content-type": "application/json", "x-keytrail-token": "nope"}
    response = post(receiver, json.dumps({"keytrail_ping": "m"}).encode(), headers)
    assert response.status_code == 401
    assert redis.get(ping_key("acme", "m")) is None


def test_over_high_water_mark_answers_503_with_retry_after(make_settings: SettingsFactory, redis: Redis) -> None:
    settings = make_settings(ingest={"high_water_mark": 2, "retry_after_seconds": 7})
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        statuses = []
        for index in range(4):
            body = json.dumps({**ENVELOPE, "id": f"evt-000000{index}"}).encode()
            response = post(client, body)
            statuses.append(response.status_code)
        assert statuses[:2] == [202, 202]
        assert 503 in statuses[2:]
        rejected = post(client, json.dumps({**ENVELOPE, "id": "evt-99999999"}).encode())
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "7"
        ready = client.get("/readyz")
        assert ready.status_code == 503
    assert len(queued_events(redis)) == statuses.count(202)


def test_health_ready_and_metrics(receiver: httpx.Client) -> None:
    assert receiver.get("/healthz").json() == {"status": "ok"}
    ready = receiver.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    post(receiver, json.dumps(ENVELOPE).encode())
    metrics = receiver.get("/metrics").text
    assert 'keytrail_webhooks_total{status="202",tenant="acme"} 1.0' in metrics
    assert "keytrail_commit_batch_events_count" in metrics
    assert 'keytrail_jobs{queue="ingest",state="queued"} 1.0' in metrics  # read from Redis at scrape time
    assert 'keytrail_jobs{queue="deliver",state="failed"} 0.0' in metrics
    assert "keytrail_workers_alive 0.0" in metrics


def test_unknown_route_and_method_are_4xx(receiver: httpx.Client) -> None:
    wrong_method = receiver.get("/hooks/theauthapi/acme")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert receiver.get("/nope").status_code == 404


def test_readyz_without_redis_is_503(make_settings: SettingsFactory) -> None:
    settings = make_settings(redis={"url": "redis://127.0.0.1:1/0"})
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/readyz").status_code == 503
        response = post(client, json.dumps(ENVELOPE).encode())
        assert response.status_code == 503
        assert "retry later" in response.json()["error"]
