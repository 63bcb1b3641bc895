"""The SQLite audit store (WAL): the default for one machine. Writers serialize on BEGIN IMMEDIATE."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workers.records import GENESIS_HASH, AuditRecord
from workers.stores.base import (
    AppendResult,
    Delivery,
    DeliveryOutcomes,
    DeliveryState,
    RecordQuery,
    Router,
)

# Versioned migrations, applied in order on open; a released entry is never edited, only appended to.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE records (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id    TEXT NOT NULL UNIQUE,
        tenant       TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        topic        TEXT NOT NULL,
        time         TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        entity_type  TEXT NOT NULL,
        entity_uid   TEXT,
        fingerprint  TEXT,
        key_prefix   TEXT,
        project_id   TEXT,
        account_id   TEXT,
        body         TEXT NOT NULL,
        prev_hash    TEXT NOT NULL,
        hash         TEXT NOT NULL,
        UNIQUE (tenant, event_id)
    );
    CREATE INDEX records_tenant_time ON records (tenant, time);
    CREATE INDEX records_fingerprint ON records (fingerprint, time);
    CREATE INDEX records_project ON records (project_id, time);
    CREATE INDEX records_topic ON records (topic, seq);
    CREATE TABLE chain_heads (
        tenant TEXT PRIMARY KEY,
        seq    INTEGER NOT NULL,
        hash   TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        record_id  TEXT NOT NULL,
        sink       TEXT NOT NULL,
        state      TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    TEXT,
        reason     TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (record_id, sink)
    );
    CREATE INDEX deliveries_sink_state ON deliveries (sink, state);
    CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    """,
)

RECORD_COLUMNS = (
    "record_id, tenant, event_id, topic, time, received_at, entity_type, entity_uid, fingerprint, key_prefix, "
    "project_id, account_id, body, prev_hash, hash"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_row(record: AuditRecord) -> tuple[Any, ...]:
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


def record_from_body(body: str) -> AuditRecord:
    return AuditRecord.from_dict(json.loads(body))


def glob_to_like(pattern: str) -> str:
    """A topic glob (`api-key.*`) as a LIKE pattern with `\\` as the escape character."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def query_where(query: RecordQuery, placeholder: str = "?") -> tuple[str, list[Any]]:
    """The WHERE clause for a RecordQuery, shared by both backends (placeholders differ)."""
    clauses: list[str] = []
    params: list[Any] = []

    def add(sql: str, value: Any) -> None:
        clauses.append(sql.replace("?", placeholder))
        params.append(value)

    if query.tenant:
        add("tenant = ?", query.tenant)
    if query.topic:
        add("topic LIKE ? ESCAPE '\\'", glob_to_like(query.topic))
    if query.fingerprint:
        add("fingerprint = ?", query.fingerprint)
    if query.key_prefix:
        add("key_prefix = ?", query.key_prefix)
    if query.project_id:
        add("project_id = ?", query.project_id)
    if query.account_id:
        add("account_id = ?", query.account_id)
    if query.entity_type:
        add("entity_type = ?", query.entity_type)
    if query.since:
        add("time >= ?", query.since)
    if query.until:
        add("time < ?", query.until)
    if query.before_seq is not None:
        add("seq > ?" if query.oldest_first else "seq < ?", query.before_seq)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, safe on crash
        self._db.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS, start=1):
                if version > current:
                    for statement in _statements(script):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        new_ids: list[str] = []
        existing_ids: list[str] = []
        now = _now()
        with self._write() as db:
            heads: dict[str, str] = {}
            for record in records:
                if db.execute(
                    "SELECT 1 FROM records WHERE tenant = ? AND event_id = ?", (record.tenant, record.event_id)
                ).fetchone():
                    existing_ids.append(record.record_id)
                    continue
                if record.tenant not in heads:
                    row = db.execute("SELECT hash FROM chain_heads WHERE tenant = ?", (record.tenant,)).fetchone()
                    heads[record.tenant] = row[0] if row else GENESIS_HASH
                chained = record.chained(heads[record.tenant])
                cursor = db.execute(
                    f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({', '.join('?' * 15)})", record_row(chained)
                )
                heads[record.tenant] = chained.hash
                db.execute(
                    "INSERT INTO chain_heads (tenant, seq, hash) VALUES (?, ?, ?) "
                    "ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (record.tenant, cursor.lastrowid, chained.hash),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO deliveries (record_id, sink, state, updated_at) VALUES (?, ?, ?, ?)",
                    [(record.record_id, sink, DeliveryState.PENDING.value, now) for sink in route(record)],
                )
                new_ids.append(record.record_id)
            pending = self._pending(db, [r.record_id for r in records])
        return AppendResult(new_ids, existing_ids, pending)

    def _pending(self, db: sqlite3.Connection, record_ids: Sequence[str]) -> dict[str, list[str]]:
        pending: dict[str, list[str]] = {}
        for chunk in _chunks(list(dict.fromkeys(record_ids)), 500):
            rows = db.execute(
                f"SELECT sink, record_id FROM deliveries WHERE state = 'pending' "
                f"AND record_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for sink, record_id in rows:
                pending.setdefault(sink, []).append(record_id)
        return pending

    def get(self, record_ids: Sequence[str]) -> list[AuditRecord]:
        found: dict[str, AuditRecord] = {}
        with self._lock:
            for chunk in _chunks(list(record_ids), 500):
                rows = self._db.execute(
                    f"SELECT record_id, body FROM records WHERE record_id IN ({', '.join('?' * len(chunk))})", chunk
                )
                found.update((rid, record_from_body(body)) for rid, body in rows)
        return [found[rid] for rid in record_ids if rid in found]

    def search(self, query: RecordQuery) -> list[tuple[int, AuditRecord]]:
        where, params = query_where(query)
        order = "ASC" if query.oldest_first else "DESC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, body FROM records{where} ORDER BY seq {order} LIMIT ?", [*params, query.limit]
            ).fetchall()
        return [(seq, record_from_body(body)) for seq, body in rows]

    def to_deliver(self, sink: str, record_ids: Sequence[str]) -> list[tuple[AuditRecord, int]]:
        attempts: dict[str, int] = {}
        with self._lock:
            for chunk in _chunks(list(record_ids), 500):
                rows = self._db.execute(
                    f"SELECT record_id, attempts FROM deliveries WHERE sink = ? AND state IN ('pending', 'retrying') "
                    f"AND record_id IN ({', '.join('?' * len(chunk))})",
                    [sink, *chunk],
                )
                attempts.update(rows)
        records = self.get([rid for rid in record_ids if rid in attempts])
        return [(record, attempts[record.record_id]) for record in records]

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes) -> None:
        now = _now()
        rows: list[tuple[Any, ...]] = []
        rows += [(DeliveryState.DELIVERED.value, None, None, now, rid, sink) for rid in outcomes.delivered]
        rows += [(DeliveryState.DEAD.value, None, reason, now, rid, sink) for rid, reason in outcomes.dead.items()]
        rows += [
            (DeliveryState.RETRYING.value, next_at, reason, now, rid, sink)
            for rid, (reason, next_at) in outcomes.retrying.items()
        ]
        with self._write() as db:
            db.executemany(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_at = ?, reason = ?, updated_at = ? "
                "WHERE record_id = ? AND sink = ?",
                rows,
            )

    def deliveries(self, record_id: str) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record_id, sink, state, attempts, next_at, reason, updated_at FROM deliveries "
                "WHERE record_id = ? ORDER BY sink",
                (record_id,),
            ).fetchall()
        return [Delivery(r[0], r[1], DeliveryState(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [s for s in statements if s]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
