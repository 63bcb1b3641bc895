"""The audit tables as both SQL backends read and write them: column lists, rows ↔ values, WHERE clauses.

Pure functions, no I/O. Clauses use `?` placeholders (`audit.stores.dialect.Session` binds them per driver).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from audit.stores.base import (
    ChainRow,
    Checkpoint,
    CheckpointKind,
    Delivery,
    DeliveryOutcomes,
    DeliveryState,
    RecordQuery,
)
from events.records import AuditRecord
from events.times import now_utc

RECORD_COLUMNS = (
    "record_id, tenant, event_id, topic, time, received_at, entity_type, entity_uid, fingerprint, key_prefix, "
    "project_id, account_id, body, prev_hash, hash"
)
RECORD_VALUES = ", ".join("?" * 15)
CHAIN_COLUMNS = "seq, " + RECORD_COLUMNS
HEAD_COLUMNS = "tenant, seq, hash, length, checkpointed"
CHECKPOINT_COLUMNS = "id, tenant, seq, hash, length, kind, created_at, prev_signature, key_id, signature"
DELIVERY_COLUMNS = "d.record_id, d.sink, d.state, d.attempts, d.next_at, d.reason, d.updated_at"


def now() -> str:
    """The current time as records and deliveries store it: ISO UTC with ms and `Z`."""
    return now_utc()


def record_row(record: AuditRecord) -> tuple[Any, ...]:
    """The values of RECORD_COLUMNS for one record; `body` is its JSON (sorted keys, compact)."""
    body = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        record.record_id,
        record.tenant,
        record.event_id,
        record.topic,
        record.time,
        record.received_at,
        str(record.entity.type),
        record.entity.uid,
        record.entity.fingerprint,
        record.entity.prefix,
        record.project_id,
        record.account_id,
        body,
        record.prev_hash,
        record.hash,
    )


def checkpoint_row(checkpoint: Checkpoint) -> tuple[Any, ...]:
    """The values of CHECKPOINT_COLUMNS but `id` (the store gives it out)."""
    return (
        checkpoint.tenant,
        checkpoint.seq,
        checkpoint.hash,
        checkpoint.length,
        checkpoint.kind.value,
        checkpoint.created_at,
        checkpoint.prev_signature,
        checkpoint.key_id,
        checkpoint.signature,
    )


def outcome_rows(sink: str, outcomes: DeliveryOutcomes, now: str) -> list[tuple[Any, ...]]:
    """(state, next_at, reason, updated_at, record_id, sink) per outcome, for `record_outcomes`' UPDATE."""
    rows: list[tuple[Any, ...]] = []
    rows += [(DeliveryState.DELIVERED.value, None, None, now, rid, sink) for rid in outcomes.delivered]
    rows += [(DeliveryState.DEAD.value, None, reason, now, rid, sink) for rid, reason in outcomes.dead.items()]
    rows += [
        (DeliveryState.RETRYING.value, next_at, reason, now, rid, sink)
        for rid, (reason, next_at) in outcomes.retrying.items()
    ]
    return rows


def record_from_body(body: str) -> AuditRecord:
    return AuditRecord.from_dict(json.loads(body))


def chain_row(row: Sequence[Any]) -> ChainRow:
    return ChainRow(*row)


def checkpoint_from_row(row: Sequence[Any]) -> Checkpoint:
    id_, tenant, seq, hash_, length, kind, created_at, prev_signature, key_id, signature = row
    return Checkpoint(
        tenant, seq, hash_, length, CheckpointKind(kind), created_at, prev_signature, key_id, signature, id_
    )


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    return Delivery(row[0], row[1], DeliveryState(row[2]), row[3], row[4], row[5], row[6])


def glob_to_like(pattern: str) -> str:
    """A topic glob (`api-key.*`) as a LIKE pattern with `\\` as the escape character."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def query_where(query: RecordQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (with its leading space, or empty) and parameters for a RecordQuery over `records`."""
    conditions: list[tuple[str, tuple[Any, ...]]] = [
        (sql, (value,))
        for sql, value in (
            ("tenant = ?", query.tenant),
            ("topic LIKE ? ESCAPE '\\'", glob_to_like(query.topic) if query.topic else None),
            ("fingerprint = ?", query.fingerprint),
            ("key_prefix = ?", query.key_prefix),
            ("project_id = ?", query.project_id),
            ("account_id = ?", query.account_id),
            ("entity_type = ?", query.entity_type),
            ("event_id = ?", query.event_id),
            ("time >= ?", query.since),
            ("time < ?", query.until),
        )
        if value
    ]
    if query.before_seq is not None:
        if query.event_time_order and query.cursor_time is not None:
            cursor_time = query.cursor_time
            conditions.append(("(time > ? OR (time = ? AND seq > ?))", (cursor_time, cursor_time, query.before_seq)))
        else:
            forward = query.oldest_first or query.event_time_order
            conditions.append(("seq > ?" if forward else "seq < ?", (query.before_seq,)))
    if not conditions:
        return "", []
    where = " WHERE " + " AND ".join(sql for sql, _ in conditions)
    return where, [value for _, values in conditions for value in values]


def query_order_by(query: RecordQuery) -> str:
    if query.event_time_order:
        return " ORDER BY time ASC, seq ASC"
    return " ORDER BY seq ASC" if query.oldest_first else " ORDER BY seq DESC"


def deliveries_where(
    *,
    states: Sequence[DeliveryState],
    sink: str | None,
    topic: str | None,
    since: str | None,
    record_id: str | None,
) -> tuple[str, list[Any]]:
    """The WHERE clause of `list_deliveries` over `deliveries d JOIN records r`."""
    if not states:
        raise ValueError("list_deliveries needs at least one state")
    clauses = [f"d.state IN ({', '.join('?' * len(states))})"]
    params: list[Any] = [DeliveryState(s).value for s in states]
    for sql, value in (
        ("d.sink = ?", sink),
        ("r.topic LIKE ? ESCAPE '\\'", glob_to_like(topic) if topic else None),
        ("d.updated_at >= ?", since),
        ("d.record_id = ?", record_id),
    ):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    return " WHERE " + " AND ".join(clauses), params
