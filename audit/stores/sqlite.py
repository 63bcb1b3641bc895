"""The SQLite audit store (WAL): the default for one machine. Writers serialize on BEGIN IMMEDIATE.

Records are append-only: triggers abort any UPDATE or DELETE. The one exception is `prune`, which drops the
delete trigger, removes a chain prefix and recreates the trigger inside the same transaction (SQLite's DDL is
transactional, so no other connection ever sees the table unguarded), after writing a signed prune anchor.
"""

# ruff: noqa: S608 - SQL text is built only from this module's constants and placeholders; values are always bound.
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from audit.stores.base import (
    CHECKPOINT_EVERY,
    AppendResult,
    ChainHead,
    ChainPlace,
    ChainRow,
    Checkpoint,
    CheckpointKind,
    CheckpointSigner,
    Delivery,
    DeliveryOutcomes,
    DeliveryState,
    PruneResult,
    RecordQuery,
    Router,
    StoredRecord,
    StoreUnavailable,
)
from events.records import GENESIS_HASH, AuditRecord

log = structlog.get_logger("keytrail.audit")
STREAM_BATCH = 2000

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
    # 2: chain length + checkpoints (tamper evidence beyond the hash chain), indexes for verify/tail and the DLQ.
    """
    ALTER TABLE chain_heads ADD COLUMN length INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE chain_heads ADD COLUMN checkpointed INTEGER NOT NULL DEFAULT 0;
    UPDATE chain_heads SET length = (SELECT count(*) FROM records WHERE records.tenant = chain_heads.tenant);
    CREATE INDEX records_tenant_seq ON records (tenant, seq);
    CREATE INDEX records_account ON records (account_id, time);
    CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);
    CREATE TABLE checkpoints (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant         TEXT NOT NULL,
        seq            INTEGER NOT NULL,
        hash           TEXT NOT NULL,
        length         INTEGER NOT NULL,
        kind           TEXT NOT NULL,
        created_at     TEXT NOT NULL,
        prev_signature TEXT NOT NULL,
        key_id         TEXT NOT NULL,
        signature      TEXT NOT NULL
    );
    CREATE INDEX checkpoints_tenant ON checkpoints (tenant, id);
    CREATE INDEX checkpoints_tenant_seq ON checkpoints (tenant, seq);
    CREATE TRIGGER checkpoints_append_only_update BEFORE UPDATE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
    CREATE TRIGGER checkpoints_append_only_delete BEFORE DELETE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
    """,
    # 3: delivery leases (who is sending a record to a sink, until when), so two deliver jobs never send one twice.
    """
    ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
    ALTER TABLE deliveries ADD COLUMN lease_until REAL;
    """,
)

RECORD_COLUMNS = (
    "record_id, tenant, event_id, topic, time, received_at, entity_type, entity_uid, fingerprint, key_prefix, "
    "project_id, account_id, body, prev_hash, hash"
)
CHAIN_COLUMNS = "seq, " + RECORD_COLUMNS
CHECKPOINT_COLUMNS = "id, tenant, seq, hash, length, kind, created_at, prev_signature, key_id, signature"
DELIVERY_COLUMNS = "d.record_id, d.sink, d.state, d.attempts, d.next_at, d.reason, d.updated_at"
DELETE_GUARD = "records_append_only_delete"
# Parameters: now, owner, until. Free: never leased, lease expired, or leased to this owner by an earlier run (a
# retried or recovered job) — but not the rows this very claim just leased (their lease ends exactly at `until`).
LEASE_FREE = "(lease_until IS NULL OR lease_until < ? OR (lease_owner = ? AND lease_until < ?))"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the store's file, as every connection of the store is set up (writer, readers and the
    checkpointer alike)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA busy_timeout=30000")
    # Durable at commit: in WAL mode FULL syncs the WAL on every commit (one fsync per transaction, and a batch of
    # events is one transaction), so once `append` returns, the normalize job may be acknowledged and leave Redis.
    # NORMAL syncs only at checkpoints: a power cut could take back records whose job was already gone.
    db.execute("PRAGMA synchronous=FULL")
    # Record ids, event ids and fingerprints are hashes: each appended record dirties its own leaf page in
    # four indexes once the table is large. A 64 MB page cache (default 2 MB) keeps those indexes' inner
    # pages in memory. Checkpoints do not run inside commits (where a large one stalled appends for
    # 100+ ms, bench/latency.py) but from a background thread, see _Checkpointer.
    db.execute("PRAGMA cache_size=-65536")
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


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


def outcome_rows(sink: str, outcomes: DeliveryOutcomes, now: str) -> list[tuple[Any, ...]]:
    """(state, next_at, reason, updated_at, record_id, sink) per outcome, for both backends' UPDATE."""
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


def query_where(query: RecordQuery, placeholder: str = "?") -> tuple[str, list[Any]]:
    """The WHERE clause for a RecordQuery, shared by both backends (placeholders differ)."""
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
    where = " WHERE " + " AND ".join(sql.replace("?", placeholder) for sql, _ in conditions)
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
    placeholder: str = "?",
) -> tuple[str, list[Any]]:
    """The WHERE clause of `list_deliveries` over `deliveries d JOIN records r`, for both backends."""
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
    return " WHERE " + " AND ".join(c.replace("?", placeholder) for c in clauses), params


class SqliteStore:
    def __init__(
        self, path: Path, *, signer: CheckpointSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.signer = signer
        self.checkpoint_every = max(1, checkpoint_every)
        self._lock = threading.RLock()
        self._checkpointer: _Checkpointer | None = None
        self._db = self._connect()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            return connect(self.path)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None

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

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in one read transaction: a stable snapshot (WAL) that blocks no writer."""
        db = self._connect()
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute("BEGIN")
            yield db
        finally:
            db.close()

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

    # ---- appending ------------------------------------------------------------------------------------------

    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self.path)  # only processes that write need one
        new_ids: list[str] = []
        existing_ids: list[str] = []
        now = _now()
        written: list[Checkpoint] = []
        pending: dict[str, list[str]] = {}  # a new record's deliveries are all pending; existing ones are looked up
        with self._write() as db:
            heads: dict[str, ChainHead] = {}
            for record in records:
                if db.execute(
                    "SELECT 1 FROM records WHERE tenant = ? AND event_id = ?", (record.tenant, record.event_id)
                ).fetchone():
                    existing_ids.append(record.record_id)
                    continue
                head = heads.get(record.tenant) or _head(db, record.tenant)
                chained = record.chained(head.hash)
                cursor = db.execute(
                    f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({', '.join('?' * 15)})", record_row(chained)
                )
                assert cursor.lastrowid is not None
                heads[record.tenant] = ChainHead(
                    record.tenant, cursor.lastrowid, chained.hash, head.length + 1, head.checkpointed
                )
                sinks = list(dict.fromkeys(route(record)))
                db.executemany(
                    "INSERT OR IGNORE INTO deliveries (record_id, sink, state, updated_at) VALUES (?, ?, ?, ?)",
                    [(record.record_id, sink, DeliveryState.PENDING.value, now) for sink in sinks],
                )
                for sink in sinks:
                    pending.setdefault(sink, []).append(record.record_id)
                new_ids.append(record.record_id)
            for head in heads.values():
                db.execute(
                    "INSERT INTO chain_heads (tenant, seq, hash, length, checkpointed) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                    "length = excluded.length",
                    (head.tenant, head.seq, head.hash, head.length, head.checkpointed),
                )
                if self.signer and head.length - head.checkpointed >= self.checkpoint_every:
                    written.append(_insert_checkpoint(db, self.signer, head, CheckpointKind.PERIODIC, now))
            stored_before = set(existing_ids) - set(new_ids)  # not a duplicate of a record new in this batch
            for sink, record_ids in _pending(db, [rid for rid in existing_ids if rid in stored_before]).items():
                pending.setdefault(sink, []).extend(record_ids)
        log_checkpoints(written)
        return AppendResult(new_ids, existing_ids, pending)

    # ---- reading --------------------------------------------------------------------------------------------

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
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, body FROM records{where}{query_order_by(query)} LIMIT ?", [*params, query.limit]
            ).fetchall()
        return [(seq, record_from_body(body)) for seq, body in rows]

    def count(self, query: RecordQuery) -> int:
        where, params = query_where(query)
        with self._lock:
            total: int = self._db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0]
        return total

    def stream(self, query: RecordQuery, *, limit: int | None = None) -> Iterator[StoredRecord]:
        where, params = query_where(query)
        sql = f"SELECT seq, body FROM records{where}{query_order_by(query)}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._reader() as db:
            cursor = db.execute(sql, params)
            while batch := cursor.fetchmany(STREAM_BATCH):
                for seq, body in batch:
                    yield StoredRecord(seq, body)

    def locate(self, record_id: str) -> ChainPlace | None:
        with self._lock:
            db = self._db
            found = db.execute("SELECT seq, tenant FROM records WHERE record_id = ?", (record_id,)).fetchone()
            if found is None:
                return None
            seq, tenant = found
            anchor = _latest_anchor(db, tenant)
            before = db.execute(
                "SELECT count(*) FROM records WHERE tenant = ? AND seq <= ? AND seq > ?",
                (tenant, seq, anchor.seq if anchor else 0),
            ).fetchone()[0]
            previous = db.execute(
                "SELECT record_id, hash FROM records WHERE tenant = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
                (tenant, seq),
            ).fetchone()
            following = db.execute(
                "SELECT record_id, prev_hash FROM records WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT 1",
                (tenant, seq),
            ).fetchone()
            covering = db.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? AND seq >= ? ORDER BY seq, id LIMIT 1",
                (tenant, seq),
            ).fetchone()
        return ChainPlace(
            seq=seq,
            position=(anchor.length if anchor else 0) + before,
            previous=(previous[0], previous[1]) if previous else None,
            next=(following[0], following[1]) if following else None,
            checkpoint=checkpoint_from_row(covering) if covering else None,
            anchor=anchor,
        )

    @contextmanager
    def snapshot(self) -> Iterator[SqliteSnapshot]:
        with self._reader() as db:
            yield SqliteSnapshot(db)

    # ---- deliveries -----------------------------------------------------------------------------------------

    def claim(
        self, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, lease_seconds: float
    ) -> list[tuple[AuditRecord, int]]:
        now = time.time()
        until = now + max(0.0, lease_seconds)
        owed = f"sink = ? AND state IN ('pending', 'retrying') AND {LEASE_FREE}"
        lease = "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE "
        attempts: dict[str, int] = {}
        # BEGIN IMMEDIATE: the claims of all processes serialize on SQLite's write lock, so a row is leased once.
        with self._write() as db:
            for chunk in _chunks(list(dict.fromkeys(record_ids)), 500):
                rows = db.execute(
                    f"{lease}{owed} AND record_id IN ({', '.join('?' * len(chunk))}) RETURNING record_id, attempts",
                    [owner, until, sink, now, owner, until, *chunk],
                ).fetchall()
                attempts.update(rows)
            if limit > 0:
                sweep = f"rowid IN (SELECT rowid FROM deliveries WHERE {owed} LIMIT ?)"
                rows = db.execute(
                    f"{lease}{sweep} RETURNING record_id, attempts", [owner, until, sink, now, owner, until, limit]
                ).fetchall()
                attempts.update(rows)
            bodies: dict[str, str] = {}
            for chunk in _chunks(list(attempts), 500):
                bodies.update(
                    db.execute(
                        f"SELECT record_id, body FROM records WHERE record_id IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                )
        return [(record_from_body(bodies[rid]), made) for rid, made in attempts.items() if rid in bodies]

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes, *, owner: str | None = None) -> None:
        now = _now()
        rows = outcome_rows(sink, outcomes, now)
        mine = " AND lease_owner = ?" if owner is not None else ""
        with self._write() as db:
            db.executemany(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_at = ?, reason = ?, updated_at = ?, "
                f"lease_owner = NULL, lease_until = NULL WHERE record_id = ? AND sink = ?{mine}",
                [(*row, owner) for row in rows] if owner is not None else rows,
            )

    def deliveries(self, record_id: str) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.record_id = ? ORDER BY d.sink",
                (record_id,),
            ).fetchall()
        return [delivery_from_row(r) for r in rows]

    def list_deliveries(
        self,
        *,
        states: Sequence[DeliveryState],
        sink: str | None = None,
        topic: str | None = None,
        since: str | None = None,
        record_id: str | None = None,
        limit: int = 100,
    ) -> list[tuple[Delivery, AuditRecord]]:
        where, params = deliveries_where(states=states, sink=sink, topic=topic, since=since, record_id=record_id)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {DELIVERY_COLUMNS}, r.body FROM deliveries d JOIN records r ON r.record_id = d.record_id"
                f"{where} ORDER BY d.updated_at DESC, r.seq DESC, d.sink LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [(delivery_from_row(row), record_from_body(row[7])) for row in rows]

    def reset_deliveries(self, sink: str, record_ids: Sequence[str]) -> list[str]:
        reset: set[str] = set()
        now = _now()
        with self._write() as db:
            for chunk in _chunks(list(dict.fromkeys(record_ids)), 500):
                rows = db.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = NULL, reason = NULL, "
                    "lease_owner = NULL, lease_until = NULL, "
                    f"updated_at = ? WHERE sink = ? AND state IN ('dead', 'retrying') "
                    f"AND record_id IN ({', '.join('?' * len(chunk))}) RETURNING record_id",
                    [now, sink, *chunk],
                ).fetchall()
                reset.update(rid for (rid,) in rows)
        return [rid for rid in dict.fromkeys(record_ids) if rid in reset]

    def count_deliveries(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            rows = self._db.execute("SELECT sink, state, count(*) FROM deliveries GROUP BY sink, state").fetchall()
        for sink, state, number in rows:
            counts.setdefault(sink, {})[state] = number
        return counts

    # ---- checkpoints and retention --------------------------------------------------------------------------

    def write_checkpoints(
        self, signer: CheckpointSigner, kind: CheckpointKind = CheckpointKind.MANUAL, *, tenant: str | None = None
    ) -> list[Checkpoint]:
        now = _now()
        written: list[Checkpoint] = []
        with self._write() as db:
            for head in _heads(db, tenant):
                if head.length > head.checkpointed:
                    written.append(_insert_checkpoint(db, signer, head, kind, now))
        log_checkpoints(written)
        return written

    def prune(
        self, before: str, signer: CheckpointSigner, *, tenant: str | None = None, dry_run: bool = False
    ) -> list[PruneResult]:
        now = _now()
        results: list[PruneResult] = []
        with self._write() as db:
            for head in _heads(db, tenant):
                anchor = _latest_anchor(db, head.tenant)
                # The prefix ends at the first record received at/after `before`: the chain is cut, never holed.
                cut = db.execute(
                    "SELECT seq FROM records WHERE tenant = ? AND received_at >= ? ORDER BY seq LIMIT 1",
                    (head.tenant, before),
                ).fetchone()
                last = db.execute(
                    "SELECT seq, hash FROM records WHERE tenant = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
                    (head.tenant, cut[0] if cut else 2**62),
                ).fetchone()
                if last is None:
                    results.append(PruneResult(head.tenant, 0, 0, None))
                    continue
                doomed = "SELECT record_id FROM records WHERE tenant = ? AND seq <= ?"
                removed, undelivered = db.execute(
                    f"SELECT (SELECT count(*) FROM records WHERE tenant = ? AND seq <= ?), "
                    f"(SELECT count(*) FROM deliveries WHERE state != 'delivered' AND record_id IN ({doomed}))",
                    (head.tenant, last[0], head.tenant, last[0]),
                ).fetchone()
                if dry_run:
                    results.append(PruneResult(head.tenant, removed, undelivered, None))
                    continue
                at = ChainHead(head.tenant, last[0], last[1], (anchor.length if anchor else 0) + removed)
                written = _insert_checkpoint(db, signer, at, CheckpointKind.PRUNE, now, move_head=False)
                db.execute(f"DELETE FROM deliveries WHERE record_id IN ({doomed})", (head.tenant, last[0]))
                guard = db.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (DELETE_GUARD,)
                ).fetchone()[0]
                db.execute(f"DROP TRIGGER {DELETE_GUARD}")
                db.execute("DELETE FROM records WHERE tenant = ? AND seq <= ?", (head.tenant, last[0]))
                db.execute(guard)
                results.append(PruneResult(head.tenant, removed, undelivered, written))
        log_checkpoints([r.anchor for r in results if r.anchor])
        return results

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._db.close()


class _Checkpointer:
    """Copies the WAL back into the database from a thread of its own, on a connection of its own.

    A PASSIVE checkpoint never blocks writers, so appends never wait for one. Small and often (every 0.2 s) beat
    both SQLite's in-commit autocheckpoint and larger rounds on receipt-to-sink p99 (bench/latency.py, three
    alternating runs each: 160/73/68 ms against 185/118/322 ms). Past 64 MiB of WAL it truncates the file.
    """

    INTERVAL = 0.2
    TRUNCATE_BYTES = 64 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keytrail-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = connect(self.path)
        wal = Path(f"{self.path}-wal")
        try:
            while not self._stop.wait(self.INTERVAL):
                big = wal.exists() and wal.stat().st_size > self.TRUNCATE_BYTES
                with contextlib.suppress(sqlite3.OperationalError):  # busy: the next round catches up
                    db.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if big else 'PASSIVE'})").fetchall()
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class SqliteSnapshot:
    """Chains as of one read transaction on a private connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def tenants(self) -> list[str]:
        rows = self._db.execute(
            "SELECT tenant FROM chain_heads UNION SELECT DISTINCT tenant FROM records "
            "UNION SELECT DISTINCT tenant FROM checkpoints ORDER BY 1"
        ).fetchall()
        return [tenant for (tenant,) in rows]

    def head(self, tenant: str) -> ChainHead | None:
        heads = _heads(self._db, tenant)
        return heads[0] if heads else None

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        rows = self._db.execute(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? ORDER BY id", (tenant,)
        ).fetchall()
        return [checkpoint_from_row(row) for row in rows]

    def rows(self, tenant: str) -> Generator[ChainRow, None, None]:
        cursor = self._db.execute(f"SELECT {CHAIN_COLUMNS} FROM records WHERE tenant = ? ORDER BY seq", (tenant,))
        while batch := cursor.fetchmany(STREAM_BATCH):
            yield from (chain_row(row) for row in batch)


def log_checkpoints(written: Sequence[Checkpoint]) -> None:
    """Checkpoints also go to the log stream: a copy outside the store that a rewrite of the store cannot reach."""
    for checkpoint in written:
        log.info(
            "checkpoint_written",
            tenant=checkpoint.tenant,
            kind=str(checkpoint.kind),
            seq=checkpoint.seq,
            length=checkpoint.length,
            hash=checkpoint.hash,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )


def _pending(db: sqlite3.Connection, record_ids: Sequence[str]) -> dict[str, list[str]]:
    pending: dict[str, list[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(record_ids)), 500):
        rows = db.execute(
            f"SELECT sink, record_id, state FROM deliveries WHERE record_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        for sink, record_id, state in rows:
            if state == DeliveryState.PENDING:
                pending.setdefault(sink, []).append(record_id)
    return pending


def _head(db: sqlite3.Connection, tenant: str) -> ChainHead:
    heads = _heads(db, tenant)
    return heads[0] if heads else ChainHead(tenant, 0, GENESIS_HASH, 0)


def _heads(db: sqlite3.Connection, tenant: str | None) -> list[ChainHead]:
    sql = "SELECT tenant, seq, hash, length, checkpointed FROM chain_heads"
    rows = db.execute(f"{sql} WHERE tenant = ?", (tenant,)) if tenant else db.execute(f"{sql} ORDER BY tenant")
    return [ChainHead(*row) for row in rows]


def _latest_anchor(db: sqlite3.Connection, tenant: str) -> Checkpoint | None:
    row = db.execute(
        f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? AND kind = 'prune' ORDER BY id DESC LIMIT 1",
        (tenant,),
    ).fetchone()
    return checkpoint_from_row(row) if row else None


def _insert_checkpoint(
    db: sqlite3.Connection,
    signer: CheckpointSigner,
    head: ChainHead,
    kind: CheckpointKind,
    now: str,
    *,
    move_head: bool = True,
) -> Checkpoint:
    row = db.execute(
        "SELECT signature FROM checkpoints WHERE tenant = ? ORDER BY id DESC LIMIT 1", (head.tenant,)
    ).fetchone()
    checkpoint = Checkpoint.signed(signer, head, kind, now, row[0] if row else "")
    cursor = db.execute(
        f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS.removeprefix('id, ')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            checkpoint.tenant,
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.length,
            checkpoint.kind.value,
            checkpoint.created_at,
            checkpoint.prev_signature,
            checkpoint.key_id,
            checkpoint.signature,
        ),
    )
    if move_head:
        db.execute("UPDATE chain_heads SET checkpointed = ? WHERE tenant = ?", (head.length, head.tenant))
    assert cursor.lastrowid is not None
    return Checkpoint(**{**_fields(checkpoint), "id": cursor.lastrowid})


def _fields(checkpoint: Checkpoint) -> dict[str, Any]:
    return {name: getattr(checkpoint, name) for name in Checkpoint.__dataclass_fields__}


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
