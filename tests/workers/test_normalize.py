"""Normalization: every topic and envelope shape to an OCSF 3004 record, secrets only as fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from events.envelope import event_key, parse_envelope
from events.records import Activity, AuditRecord, EntityType, Severity
from events.redaction import describe, fingerprint, redact
from workers.normalize import normalize

PEPPER = b"test-pepper"
KEY = "live_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
TOKEN = "live_access_c2VjcmV0LWFjY2Vzcy10b2tlbi0xMjM0"


def accepted(body: dict[str, Any], tenant: str = "acme") -> dict[str, Any]:
    raw = json.dumps(body).encode()
    envelope = parse_envelope(body)
    return {
        "tenant": tenant,
        "event_key": event_key(envelope, hashlib.sha256(raw).hexdigest()),
        "topic": envelope.topic,
        "received_at": "2026-11-28T12:00:00.000Z",
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "body": json.dumps(redact(body, PEPPER)),
    }


def envelope(topic: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "9a1f0c1e-1111-4222-8333-444455556666",
        "topic": topic,
        "createdAt": "2026-11-28T11:59:59.123Z",
        "projectId": "proj-1",
        "accountId": "acct-1",
        "data": data,
    }


API_KEY = {
    "key": KEY,
    "name": "checkout",
    "env": "live",
    "projectId": "proj-1",
    "createdBy": "u1",
    "createdByType": "USER",
    "lastChangedBy": "ak-9",
    "lastChangedByType": "ACCESS_KEY",
}
ACCESS_KEY = {"key": TOKEN, "name": "deploy", "accountId": "acct-1", "projectId": "proj-1"}
PROJECT = {"id": "proj-1", "name": "Shop", "accountId": "acct-1", "env": "live", "updatedAt": "2026-11-28T11:00:00Z"}


@pytest.mark.parametrize(
    ("topic", "data", "entity_type", "activity", "severity"),
    [
        ("api-key.created", API_KEY, EntityType.API_KEY, Activity.CREATE, Severity.INFORMATIONAL),
        ("api-key.updated", API_KEY, EntityType.API_KEY, Activity.UPDATE, Severity.INFORMATIONAL),
        ("api-key.deleted", API_KEY, EntityType.API_KEY, Activity.DELETE, Severity.LOW),
        ("api-key.firstUsed", API_KEY, EntityType.API_KEY, Activity.OTHER, Severity.INFORMATIONAL),
        ("access-key.created", ACCESS_KEY, EntityType.ACCESS_KEY, Activity.CREATE, Severity.MEDIUM),
        ("access-key.updated", ACCESS_KEY, EntityType.ACCESS_KEY, Activity.UPDATE, Severity.MEDIUM),
        ("access-key.deleted", ACCESS_KEY, EntityType.ACCESS_KEY, Activity.DELETE, Severity.MEDIUM),
        ("project.updated", PROJECT, EntityType.PROJECT, Activity.UPDATE, Severity.LOW),
        ("api-key.rotated", API_KEY, EntityType.API_KEY, Activity.OTHER, Severity.LOW),
        ("webhook.created", {"id": "w-1", "url": "https://x"}, EntityType.UNKNOWN, Activity.CREATE, Severity.LOW),
    ],
)
def test_each_topic_maps_to_ocsf(
    topic: str, data: dict[str, Any], entity_type: EntityType, activity: Activity, severity: Severity
) -> None:
    record = normalize(accepted(envelope(topic, data)), version="test")

    assert (record.class_uid, record.category_uid) == (3004, 3)
    assert record.topic == topic
    assert record.entity.type is entity_type
    assert record.activity_id is activity
    assert record.type_uid == 300400 + int(activity)
    assert record.severity_id is severity
    assert record.event_id == "9a1f0c1e-1111-4222-8333-444455556666"
    assert record.time == "2026-11-28T11:59:59.123Z"
    assert record.project_id == "proj-1"
    assert record.account_id == "acct-1"
    assert record.metadata["product"] == "The Auth API"
    serialized = json.dumps(record.to_dict())
    assert KEY not in serialized
    assert TOKEN not in serialized


def test_api_key_entity_is_its_fingerprint_prefix_and_last4() -> None:
    record = normalize(accepted(envelope("api-key.created", API_KEY)), version="test")
    assert record.entity.fingerprint == fingerprint(PEPPER, KEY)
    assert record.entity.uid == record.entity.fingerprint
    assert (record.entity.prefix, record.entity.last4, record.entity.name) == ("live_", KEY[-4:], "checkout")
    assert record.actor is not None
    assert (record.actor.uid, record.actor.type) == ("u1", "USER")


def test_access_key_prefix_and_update_actor() -> None:
    record = normalize(accepted(envelope("access-key.updated", {**ACCESS_KEY, "lastChangedBy": "u7"})), version="t")
    assert record.entity.prefix == "live_access_"
    assert record.actor is not None
    assert record.actor.uid == "u7"


@pytest.mark.parametrize(
    ("body", "entity_type"),
    [(API_KEY, EntityType.API_KEY), (ACCESS_KEY, EntityType.ACCESS_KEY), (PROJECT, EntityType.PROJECT)],
)
def test_bare_entities_are_kept_with_inferred_type(body: dict[str, Any], entity_type: EntityType) -> None:
    event = accepted(body)
    record = normalize(event, version="test")
    assert record.topic == "unknown"
    assert record.entity.type is entity_type
    assert record.activity_id is Activity.OTHER
    assert record.event_id == hashlib.sha256(json.dumps(body).encode()).hexdigest()
    assert record.metadata["envelope"] == "bare"


def test_project_entity_uid_and_time_from_entity_when_envelope_has_none() -> None:
    body = {"type": "project.updated", "payload": PROJECT}
    record = normalize(accepted(body), version="test")
    assert record.entity.uid == "proj-1"
    assert record.project_id == "proj-1"
    assert record.time == "2026-11-28T11:00:00.000Z"
    # An envelope without a GUID is keyed by the body hash, never by the entity id.
    assert record.event_id == hashlib.sha256(json.dumps(body).encode()).hexdigest()


def test_time_falls_back_to_received_at() -> None:
    record = normalize(
        accepted({"event": "api-key.created", "data": {"key": KEY, "createdAt": "garbage"}}), version="t"
    )
    assert record.time == "2026-11-28T12:00:00.000Z"


def test_same_event_normalizes_to_the_same_record() -> None:
    event = accepted(envelope("api-key.deleted", API_KEY))
    assert normalize(event, version="t") == normalize(event, version="t")


def test_record_round_trips_through_dict() -> None:
    record = normalize(accepted(envelope("api-key.created", API_KEY)), version="t").chained("0" * 64)
    assert AuditRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize(
    ("value", "leaks"),
    [
        ({"key": "customKey12"}, "customKey12"),
        ({"apiKey": KEY}, KEY),
        ({"access_token": "abc.def.ghi"}, "abc.def.ghi"),
        ({"note": f"rotated {KEY} today"}, KEY),
        ({"list": [KEY, {"nested": {"secret": "s3cr3t"}}]}, "s3cr3t"),
        ({"previous": TOKEN}, TOKEN),
    ],
)
def test_redaction_finds_secrets_by_name_shape_and_inside_text(value: dict[str, Any], leaks: str) -> None:
    redacted = json.dumps(redact(value, PEPPER))
    assert leaks not in redacted
    assert "fp_" in redacted


def test_short_custom_keys_keep_no_last4() -> None:
    assert describe(PEPPER, "custom12").last4 == ""
    assert describe(PEPPER, KEY).last4 == KEY[-4:]


def test_non_secret_values_are_untouched() -> None:
    value = {"name": "live", "env": "test", "count": 3, "createdBy": "user-1"}
    assert redact(value, PEPPER) == value
