"""The SQLite audit store (WAL): the default for one machine. Writers serialize on BEGIN IMMEDIATE.

Records and checkpoints are append-only: triggers abort any UPDATE or DELETE; a chain head may only move forward
with its chain (migration 4). The one exception is `prune`, which drops the
delete trigger, removes a chain prefix and recreates the trigger inside the same transaction (SQLite's DDL is
transactional, so no other connection ever sees the table unguarded), after writing a signed prune anchor.
Every statement both backends share is in `audit.stores.sql`; this module is SQLite's dialect of it.
"""

# ruff: noqa: S608 - SQL text is built only from this module's constants and placeholders; values are always bound.
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audit.stores.base import CHECKPOINT_EVERY, ChainHead, CheckpointSigner, DeliveryState, Router, StoreUnavailable
from audit.stores.dialect import STREAM_BATCH, Chained, Session
from audit.stores.sql import SqlStore, heads, migrate
from audit.stores.tables import RECORD_COLUMNS, RECORD_VALUES, record_row
from events.records import GENESIS_HASH, AuditRecord

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
    # 4: chain heads guarded too. A head is never deleted; an UPDATE either leaves (seq, hash, length) alone or
    # moves the head forward onto a stored record of its tenant, its length grown by exactly the records stored
    # in between; `checkpointed` only grows, never past the length. Only the append path moves a head that way,
    # so a head cannot be set back to hide a deleted tail. (An upsert's DO UPDATE fires these triggers too.)
    """
    CREATE TRIGGER chain_heads_append_only_delete BEFORE DELETE ON chain_heads
        BEGIN SELECT RAISE(ABORT, 'audit chain_heads are append-only: a head only moves forward with its chain'); END;
    CREATE TRIGGER chain_heads_forward_only BEFORE UPDATE ON chain_heads
        WHEN NOT (
            NEW.tenant = OLD.tenant
            AND NEW.checkpointed >= OLD.checkpointed AND NEW.checkpointed <= NEW.length
            AND (
                (NEW.seq = OLD.seq AND NEW.hash = OLD.hash AND NEW.length = OLD.length)
                OR (
                    NEW.seq > OLD.seq
                    AND EXISTS (SELECT 1 FROM records WHERE seq = NEW.seq AND tenant = NEW.tenant AND hash = NEW.hash)
                    AND NEW.length - OLD.length = (
                        SELECT count(*) FROM records WHERE tenant = NEW.tenant AND seq > OLD.seq AND seq <= NEW.seq
                    )
                )
            )
        )
        BEGIN SELECT RAISE(ABORT, 'audit chain_heads are append-only: a head only moves forward with its chain'); END;
    """,
)

DELETE_GUARD = "records_append_only_delete"
IN_LIST = 500  # ids bound per statement: well under SQLite's limit on variables
# Parameters: now, owner, until. Free: never leased, lease expired, or leased to this owner by an earlier run (a
# retried or recovered job) — but not the rows this very claim just leased (their lease ends exactly at `until`).
LEASE_FREE = "(lease_until IS NULL OR lease_until < ? OR (lease_owner = ? AND lease_until < ?))"
OWED = f"sink = ? AND state IN ('pending', 'retrying') AND {LEASE_FREE}"
LEASE = "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE "

SqliteSession = Session[sqlite3.Connection]


class SqliteStore(SqlStore[sqlite3.Connection]):
    """The audit store in one SQLite file at `path` (created, with its directory, on first open)."""

    def __init__(
        self, path: Path, *, signer: CheckpointSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        super().__init__(SqliteDialect(path), signer=signer, checkpoint_every=checkpoint_every)


class SqliteDialect:
    """One connection shared by the store's threads for writes and quick reads (under a lock), a connection of
    its own per snapshot, and a background WAL checkpointer once the store has appended."""

    row_lock = ""  # BEGIN IMMEDIATE already serializes every writer of the file

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._checkpointer: _Checkpointer | None = None
        self._db = self._connect()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            with self.write() as session:
                migrate(session, MIGRATIONS, self._run_script)
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            return connect(self.path)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None

    def _run_script(self, script: str) -> None:
        for statement in _statements(script):
            self._db.execute(statement)

    @contextmanager
    def write(self) -> Iterator[SqliteSession]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Session(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[SqliteSession]:
        with self._lock:
            yield Session(self._db)

    @contextmanager
    def reader(self) -> Iterator[SqliteSession]:
        db = self._connect()
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute("BEGIN")
            yield Session(db)
        finally:
            db.close()

    def stream(self, session: SqliteSession, sql: str, params: Sequence[Any], name: str) -> Iterator[Any]:
        cursor = session.raw.execute(sql, params)
        while batch := cursor.fetchmany(STREAM_BATCH):
            yield from batch

    def any_of(self, column: str, values: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        for start in range(0, len(values), IN_LIST):
            chunk = list(values[start : start + IN_LIST])
            yield f"{column} IN ({', '.join('?' * len(chunk))})", chunk

    def chain(self, session: SqliteSession, records: Sequence[AuditRecord], route: Router, now: str) -> Chained:
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self.path)  # only processes that write need one
        db = session.raw
        grown: dict[str, ChainHead] = {}
        chained: list[AuditRecord] = []
        existing_ids: list[str] = []
        for record in records:
            if db.execute(
                "SELECT 1 FROM records WHERE tenant = ? AND event_id = ?", (record.tenant, record.event_id)
            ).fetchone():
                existing_ids.append(record.record_id)
                continue
            head = grown.get(record.tenant)
            if head is None:
                stored = heads(session, record.tenant)
                head = stored[0] if stored else ChainHead(record.tenant, 0, GENESIS_HASH, 0)
            linked = record.chained(head.hash)
            cursor = db.execute(f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({RECORD_VALUES})", record_row(linked))
            assert cursor.lastrowid is not None
            grown[record.tenant] = ChainHead(
                record.tenant, cursor.lastrowid, linked.hash, head.length + 1, head.checkpointed
            )
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (record_id, sink, state, updated_at) VALUES (?, ?, ?, ?)",
                [(record.record_id, sink, DeliveryState.PENDING.value, now) for sink in dict.fromkeys(route(record))],
            )
            chained.append(linked)
        db.executemany(
            "INSERT INTO chain_heads (tenant, seq, hash, length, checkpointed) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, length = excluded.length",
            [(h.tenant, h.seq, h.hash, h.length, h.checkpointed) for h in grown.values()],
        )
        return Chained(chained, existing_ids, grown)

    def lease(
        self, session: SqliteSession, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, seconds: float
    ) -> dict[str, int]:
        # Within BEGIN IMMEDIATE: the claims of all processes serialize on SQLite's write lock, so a row is leased
        # once.
        now = time.time()
        until = now + seconds
        free = [owner, until, sink, now, owner, until]
        attempts: dict[str, int] = {}
        for condition, ids in self.any_of("record_id", record_ids):
            attempts.update(session.all(f"{LEASE}{OWED} AND {condition} RETURNING record_id, attempts", free + ids))
        if limit > 0:
            sweep = f"rowid IN (SELECT rowid FROM deliveries WHERE {OWED} LIMIT ?)"
            attempts.update(session.all(f"{LEASE}{sweep} RETURNING record_id, attempts", [*free, limit]))
        return attempts

    @contextmanager
    def unguarded(self, session: SqliteSession) -> Iterator[None]:
        (guard,) = session.one("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (DELETE_GUARD,))
        session.execute(f"DROP TRIGGER {DELETE_GUARD}")
        yield
        session.execute(guard)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._db.close()


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
