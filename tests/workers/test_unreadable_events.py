"""Every acknowledged event becomes exactly one record, whatever it holds: poisoned events among good ones never
fail the batch they came in, and every record they make can be stored, read back and rendered by strict JSON."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import ServerThread, SettingsFactory, drain, signed_headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from audit.stores import DeliveryState, RecordQuery, open_store
from config import Settings
from ingest.app import create_app
from keytrail.simulation import TOPICS, make_delivery
from workers import runtime
from workers.jobs import deliver, normalize_batch

RECEIVED_AT = "2026-11-28T12:00:00.000Z"
REGRESSION_TIME = "0001-01-01T00:00:00+01:00"  # year 0 once in UTC: astimezone raised OverflowError

OFFSETS = st.builds(
    lambda sign, hours, minutes: f"{sign}{hours:02d}:{minutes:02d}",
    st.sampled_from("+-"),
    st.integers(0, 23),
    st.integers(0, 59),
)
EDGE_DATES = st.sampled_from(["0001-01-01T00:00:00", "9999-12-31T23:59:59.999", "0001-01-01", "9999-12-31T23:59"])
BAD_TIMES = st.one_of(
    st.builds(str.__add__, EDGE_DATES, OFFSETS),
    st.builds(lambda d, o: d.isoformat() + o, st.datetimes(), OFFSETS),
    st.sampled_from(["", "T", "2026-02-30T00:00:00Z", "2026-11-28T25:00:00Z", "+275760-09-13T00:00:00Z", "Z"]),
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
ODD_VALUES = st.one_of(
    st.integers(min_value=2**64, max_value=2**300),
    st.integers(min_value=-(2**300), max_value=-(2**63) - 1),
    st.builds(str.__add__, st.text(max_size=5), SURROGATES),
    st.floats(),
    st.sampled_from(["\x00", "a\x00b", "x" * 3000]),
    st.integers(280, 400).map(lambda depth: json.loads("[" * depth + "]" * depth)),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
BAD_BODY_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            "not json",
            "[" * 5000 + "]" * 5000,  # deeper than json.loads recurses
            '{"n": 1' + "0" * 5000 + "}",  # more digits than int() accepts
            '{"data": {"createdAt": 1e999}, "id": NaN, "topic": Infinity}',
            '{"id": "\\ud800", "topic": "api-key.created", "data": {"name": "\\udfff\\u0000"}}',
            "[1, 2]",
            '"a string"',
            "42",
            "null",
        ]
    ),
    st.text(max_size=30),
)
ENVELOPE_FIELDS = ("id", "topic", "createdAt", "projectId", "accountId", "data")
DATA_FIELDS = ("id", "name", "projectId", "accountId", "createdAt", "updatedAt", "createdBy", "lastChangedBy", "key")
JOB_FIELDS = ("body", "received_at", "topic", "raw_sha256", "tenant", "event_key")


def good_body(n: int, topic: str) -> dict[str, Any]:
    return {
        "id": f"9a1f0c1e-1111-4222-8333-{n:012d}",
        "topic": topic,
        "createdAt": "2026-11-28T11:59:59.123Z",
        "projectId": "proj-1",
        "accountId": "acct-1",
        "data": {
            "id": f"p-{n}",
            "name": f"key {n}",
            "projectId": "proj-1",
            "createdAt": "2026-11-28T11:00:00Z",
            "updatedAt": "2026-11-28T11:30:00Z",
            "createdBy": "u1",
            "key": {"redacted": True, "fingerprint": f"fp_{n:032x}", "prefix": "live_", "last4": "abcd"},
        },
    }


def job_entry(n: int, body: str) -> dict[str, Any]:
    """What the receiver enqueues for one event (event key and raw digest unique per event)."""
    return {
        "tenant": "acme",
        "event_key": f"evt-{n:04d}",
        "topic": None,
        "received_at": RECEIVED_AT,
        "raw_sha256": hashlib.sha256(f"raw {n}".encode()).hexdigest(),
        "body": body,
    }


@st.composite
def events(draw: st.DrawFn, n: int) -> dict[str, Any]:
    """Event n: good, or poisoned in one of the ways the issue lists (dates, data, fields, types, values, body)."""
    body = good_body(n, draw(st.sampled_from(TOPICS)))
    poison = draw(st.sampled_from(["none", "time", "data", "field", "value", "body", "job"]))
    if poison == "time":
        where = draw(st.sampled_from(["createdAt", "data.createdAt", "data.updatedAt"]))
        target = body["data"] if where.startswith("data.") else body
        target[where.removeprefix("data.")] = draw(BAD_TIMES)
    elif poison == "data":
        body["data"] = draw(ODD_VALUES)
    elif poison in ("field", "value"):
        inner = draw(st.booleans())
        target, names = (body["data"], DATA_FIELDS) if inner else (body, ENVELOPE_FIELDS)
        name = draw(st.sampled_from(names))
        if poison == "field":
            target.pop(name, None)
        else:
            target[name] = draw(ODD_VALUES)
    entry = job_entry(n, json.dumps(body))
    if poison == "body":
        entry["body"] = draw(BAD_BODY_TEXT)
    elif poison == "job":
        name = draw(st.sampled_from(JOB_FIELDS))
        if draw(st.booleans()) and name != "event_key":  # a missing event key still leaves the raw digest
            entry.pop(name)
        else:
            entry[name] = draw(st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2), BAD_TIMES))
    return entry


def identity(entry: dict[str, Any]) -> tuple[str, str]:
    """The (tenant, event id) a job entry names: what makes two entries one event."""
    tenant = entry.get("tenant") if isinstance(entry.get("tenant"), str) and entry.get("tenant") else "unknown"
    key = entry.get("event_key")
    return str(tenant), key if isinstance(key, str) and key else str(entry["raw_sha256"])


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """8-20 events, some of them sent twice (a redelivery in the same batch), in any order."""
    entries = [draw(events(n)) for n in range(draw(st.integers(8, 20)))]
    again = draw(st.lists(st.sampled_from(entries), max_size=3))
    return draw(st.permutations(entries + again))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches())
def test_poisoned_events_make_one_record_each_and_never_fail_their_batch(
    batch: list[dict[str, Any]], make_settings: SettingsFactory, tmp_path: Path, redis: Redis
) -> None:
    redis.flushdb()
    config = make_settings(
        audit={"url": f"sqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"},
        sinks=[{"name": "archive", "type": "file", "path": str(tmp_path / f"{uuid.uuid4().hex}.jsonl")}],
    )
    runtime.install(runtime.Runtime.open(config, redis))
    try:
        result = normalize_batch(batch)  # the job: it must return, whatever the batch holds
        distinct = {identity(entry) for entry in batch}
        assert result["new"] == len(distinct)
        stored = [record for _, record in runtime.current().store.search(RecordQuery(limit=1000))]
        assert sorted((r.tenant, r.event_id) for r in stored) == sorted(distinct)
        for record in stored:
            data = record.to_dict()
            json.dumps(data, allow_nan=False).encode("utf-8")  # what HEC and webhook sinks write
            orjson.dumps(data)
        assert deliver("archive", []) == {"delivered": len(distinct), "dead": 0}
    finally:
        runtime.uninstall()


# ---- the named regression, end to end: signed POSTs → real receiver → Redis → real worker → store and sink ------


def test_a_year_one_created_at_is_stored_with_its_batch_and_delivered(
    make_settings: SettingsFactory, tmp_path: Path, redis: Redis
) -> None:
    config: Settings = make_settings()
    poisoned = {
        "id": "5b0e8a52-0000-4000-8000-000000000001",
        "topic": "api-key.created",
        "createdAt": REGRESSION_TIME,
        "projectId": "proj-1",
        "data": {"name": "old", "projectId": "proj-1", "createdAt": REGRESSION_TIME},
    }
    with ServerThread(create_app(config)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        sent = [make_delivery(config.tenants["acme"], topic) for topic in TOPICS]
        for delivery in sent[:3]:
            assert client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers).is_success
        response = client.post("/hooks/theauthapi/acme", content=json.dumps(poisoned), headers=signed_headers())
        assert response.status_code == 202
        for delivery in sent[3:]:
            assert client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers).is_success
    drain(config)

    store = open_store(config.audit.url)
    try:
        records = {r.event_id: r for _, r in store.search(RecordQuery(limit=100))}
        assert len(records) == len(TOPICS) + 1
        year_one = records[poisoned["id"]]
        assert year_one.metadata["envelope"] == "wrapped"  # read normally: only the unusable time is dropped
        assert year_one.time == year_one.received_at
        assert datetime.fromisoformat(year_one.time.replace("Z", "+00:00")).year == datetime.now(UTC).year
        for record_id in (r.record_id for r in records.values()):
            assert [d.state for d in store.deliveries(record_id)] == [DeliveryState.DELIVERED]
    finally:
        store.close()


@pytest.mark.parametrize("value", [REGRESSION_TIME, "9999-12-31T23:59:59-01:00"])
def test_a_time_outside_what_utc_can_hold_is_no_time(value: str) -> None:
    from workers.normalize import normalize_time

    assert normalize_time(value) is None
