"""The PostgreSQL audit store (psycopg 3): the same contract as SQLite, for workers on several machines.

Concurrency: an append locks its tenants' chain heads (`SELECT … FOR UPDATE`, in tenant order, so two appenders
never deadlock) before it reads them, so each tenant's chain grows one transaction at a time and a redelivered
event is seen by the second appender and stored once. Just before inserting, it also takes one transaction-scoped
advisory lock, held only until commit: seq numbers are then given out in commit order, which is what lets `tail`
and cursors read "everything after seq N" without missing a record committed late with a lower number.

Append-only: a trigger rejects UPDATE, DELETE and TRUNCATE on records and checkpoints; on chain heads it rejects
DELETE and TRUNCATE and any UPDATE but the append path's (a head moves only forward with its chain). `prune` alone
deletes, by setting `keytrail.prune` for its own transaction (SET LOCAL), which the trigger honours for DELETE on
records only. Every statement both backends share is in `audit.stores.sql`; this module is PostgreSQL's dialect of it.
"""

# ruff: noqa: S608 - SQL text is built only from this module's constants and placeholders; values are always bound.
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import IsolationLevel

from audit.stores.base import CHECKPOINT_EVERY, ChainHead, CheckpointSigner, Router, StoreUnavailable
from audit.stores.dialect import STREAM_BATCH, Chained, Session
from audit.stores.sql import SqlStore, migrate
from audit.stores.tables import HEAD_COLUMNS, RECORD_COLUMNS, record_row
from events.records import GENESIS_HASH, AuditRecord

# Advisory lock keys (any constants; they only have to differ from other applications' on the same database).
MIGRATION_LOCK = 0x6B65797472_01
APPEND_LOCK = 0x6B65797472_02

# Versioned migrations, applied in order on open; a released entry is never edited, only appended to.
# Text columns compare in "C" collation: ISO times and ids sort bytewise, and LIKE 'prefix%' can use an index.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE records (
        seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        record_id    TEXT COLLATE "C" NOT NULL UNIQUE,
        tenant       TEXT COLLATE "C" NOT NULL,
        event_id     TEXT COLLATE "C" NOT NULL,
        topic        TEXT COLLATE "C" NOT NULL,
        time         TEXT COLLATE "C" NOT NULL,
        received_at  TEXT COLLATE "C" NOT NULL,
        entity_type  TEXT COLLATE "C" NOT NULL,
        entity_uid   TEXT COLLATE "C",
        fingerprint  TEXT COLLATE "C",
        key_prefix   TEXT COLLATE "C",
        project_id   TEXT COLLATE "C",
        account_id   TEXT COLLATE "C",
        body         TEXT NOT NULL,
        prev_hash    TEXT NOT NULL,
        hash         TEXT NOT NULL,
        UNIQUE (tenant, event_id)
    );
    CREATE INDEX records_tenant_time ON records (tenant, time);
    CREATE INDEX records_tenant_seq ON records (tenant, seq);
    CREATE INDEX records_fingerprint ON records (fingerprint, time);
    CREATE INDEX records_project ON records (project_id, time);
    CREATE INDEX records_account ON records (account_id, time);
    CREATE INDEX records_topic ON records (topic, seq);
    CREATE TABLE chain_heads (
        tenant       TEXT COLLATE "C" PRIMARY KEY,
        seq          BIGINT NOT NULL,
        hash         TEXT NOT NULL,
        length       BIGINT NOT NULL DEFAULT 0,
        checkpointed BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE deliveries (
        record_id  TEXT COLLATE "C" NOT NULL,
        sink       TEXT COLLATE "C" NOT NULL,
        state      TEXT COLLATE "C" NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    TEXT COLLATE "C",
        reason     TEXT,
        updated_at TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (record_id, sink)
    );
    CREATE INDEX deliveries_sink_state ON deliveries (sink, state);
    CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);
    CREATE TABLE checkpoints (
        id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant         TEXT COLLATE "C" NOT NULL,
        seq            BIGINT NOT NULL,
        hash           TEXT NOT NULL,
        length         BIGINT NOT NULL,
        kind           TEXT NOT NULL,
        created_at     TEXT COLLATE "C" NOT NULL,
        prev_signature TEXT NOT NULL,
        key_id         TEXT NOT NULL,
        signature      TEXT NOT NULL
    );
    CREATE INDEX checkpoints_tenant ON checkpoints (tenant, id);
    CREATE INDEX checkpoints_tenant_seq ON checkpoints (tenant, seq);
    CREATE FUNCTION keytrail_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'records'
           AND coalesce(current_setting('keytrail.prune', true), '') = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit % are append-only', TG_TABLE_NAME;
    END $$;
    CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON records
        FOR EACH ROW EXECUTE FUNCTION keytrail_append_only();
    CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
        FOR EACH STATEMENT EXECUTE FUNCTION keytrail_append_only();
    CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
        FOR EACH ROW EXECUTE FUNCTION keytrail_append_only();
    CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION keytrail_append_only();
    """,
    # 2: delivery leases (who is sending a record to a sink, until when, on the server's clock: one clock for
    # workers on several machines), so two deliver jobs never send one record twice.
    """
    ALTER TABLE deliveries ADD COLUMN lease_owner TEXT COLLATE "C";
    ALTER TABLE deliveries ADD COLUMN lease_until TIMESTAMPTZ;
    """,
    # 3: chain heads guarded too. A head is never deleted or truncated; an UPDATE either leaves (seq, hash, length)
    # alone or moves the head forward onto a stored record of its tenant, its length grown by exactly the records
    # stored in between; `checkpointed` only grows, never past the length. Only the append path moves a head that
    # way (under the head's row lock), so a head cannot be set back to hide a deleted tail.
    """
    CREATE FUNCTION keytrail_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.tenant = OLD.tenant
           AND NEW.checkpointed >= OLD.checkpointed AND NEW.checkpointed <= NEW.length
           AND ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash AND NEW.length = OLD.length)
                OR (NEW.seq > OLD.seq
                    AND EXISTS (SELECT 1 FROM records r
                                WHERE r.seq = NEW.seq AND r.tenant = NEW.tenant AND r.hash = NEW.hash)
                    AND NEW.length - OLD.length = (
                        SELECT count(*) FROM records r
                        WHERE r.tenant = NEW.tenant AND r.seq > OLD.seq AND r.seq <= NEW.seq)))
        THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit chain_heads are append-only: a head only moves forward with its chain';
    END $$;
    CREATE TRIGGER chain_heads_forward_only BEFORE UPDATE OR DELETE ON chain_heads
        FOR EACH ROW EXECUTE FUNCTION keytrail_head_forward_only();
    CREATE TRIGGER chain_heads_no_truncate BEFORE TRUNCATE ON chain_heads
        FOR EACH STATEMENT EXECUTE FUNCTION keytrail_append_only();
    """,
)

# Lease what a sink owes: rows another job is claiming right now are skipped (SKIP LOCKED), rows whose lease has
# not expired are left out, and this owner's own earlier leases (a retried or recovered run) are taken again, but
# not the rows this very transaction just leased (their lease ends exactly at now() + lease: now() is fixed for
# the transaction). `{only}` narrows to named records or limits the sweep.
CLAIM = """
    WITH picked AS (
        SELECT record_id FROM deliveries
        WHERE sink = %(sink)s AND state IN ('pending', 'retrying')
          AND (lease_until IS NULL OR lease_until < now()
               OR (lease_owner = %(owner)s AND lease_until < now() + make_interval(secs => %(lease)s)))
        {only}
        FOR UPDATE SKIP LOCKED
    )
    UPDATE deliveries d SET lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(lease)s)
    FROM picked WHERE d.sink = %(sink)s AND d.record_id = picked.record_id
    RETURNING d.record_id, d.attempts
"""


PgConnection = psycopg.Connection[Any]
PgSession = Session[PgConnection]


class PostgresStore(SqlStore[PgConnection]):
    """The audit store in the PostgreSQL database at `url` (its tables created on first open)."""

    def __init__(
        self, url: str, *, signer: CheckpointSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        super().__init__(PostgresDialect(url), signer=signer, checkpoint_every=checkpoint_every)


class PostgresDialect:
    """One autocommit connection shared by the store's threads (under a lock, reopened if the server dropped it),
    and a connection of its own per snapshot or export."""

    row_lock = " FOR UPDATE"  # chain heads read in a write are locked, in tenant order: appenders never deadlock

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._conn = self._connect(autocommit=True)
        try:
            with self.write() as session:
                session.raw.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                # No parameters: each script is sent as one simple query, several statements allowed.
                migrate(session, MIGRATIONS, session.raw.execute)
        except BaseException:
            self._conn.close()
            raise

    def _connect(self, **options: Any) -> PgConnection:
        try:
            return psycopg.connect(self.url, connect_timeout=10, **options)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL does not answer: {_first_line(exc)}") from None

    def _connection(self) -> PgConnection:
        """The shared connection, reopened if the server dropped it (a restart must not wedge a worker)."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect(autocommit=True)
        return self._conn

    @contextmanager
    def write(self) -> Iterator[PgSession]:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                yield Session(conn, "%s")

    @contextmanager
    def read(self) -> Iterator[PgSession]:
        with self._lock:
            yield Session(self._connection(), "%s")

    @contextmanager
    def reader(self) -> Iterator[PgSession]:
        """REPEATABLE READ, READ ONLY: one consistent snapshot."""
        conn = self._connect()
        try:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            yield Session(conn, "%s")
        finally:
            conn.close()

    def stream(self, session: PgSession, sql: str, params: Sequence[Any], name: str) -> Iterator[Any]:
        with session.raw.cursor(name=name) as cursor:
            cursor.itersize = STREAM_BATCH  # a server-side cursor: rows arrive in batches, never all at once
            cursor.execute(session.sql(sql), params)
            yield from cursor

    def any_of(self, column: str, values: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        if values:
            yield f"{column} = ANY(?)", [list(values)]

    def chain(self, session: PgSession, records: Sequence[AuditRecord], route: Router, now: str) -> Chained:
        conn = session.raw
        tenants = sorted({r.tenant for r in records})
        conn.execute(
            "INSERT INTO chain_heads (tenant, seq, hash) SELECT t, 0, %s FROM unnest(%s::text[]) AS t "
            "ORDER BY t ON CONFLICT (tenant) DO NOTHING",
            (GENESIS_HASH, tenants),
        )
        heads = {
            row[0]: ChainHead(*row)
            for row in conn.execute(
                f"SELECT {HEAD_COLUMNS} FROM chain_heads WHERE tenant = ANY(%s) ORDER BY tenant FOR UPDATE", (tenants,)
            )
        }
        # Read only now, under the heads' locks: an appender that stored the same event has committed.
        stored = set(
            conn.execute(
                "SELECT tenant, event_id FROM records WHERE (tenant, event_id) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([r.tenant for r in records], [r.event_id for r in records]),
            ).fetchall()
        )
        chained: list[AuditRecord] = []
        existing_ids: list[str] = []
        for record in records:
            key = (record.tenant, record.event_id)
            if key in stored:
                existing_ids.append(record.record_id)
                continue
            stored.add(key)
            head = heads[record.tenant]
            linked = record.chained(head.hash)
            heads[record.tenant] = replace(head, hash=linked.hash, length=head.length + 1)
            chained.append(linked)
        if chained:
            _insert(conn, chained, heads, route, now)
        return Chained(chained, existing_ids, heads)

    def lease(
        self, session: PgSession, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, seconds: float
    ) -> dict[str, int]:
        params = {"sink": sink, "owner": owner, "lease": seconds, "limit": limit}
        attempts: dict[str, int] = {}
        if record_ids:
            only = "AND record_id = ANY(%(ids)s)"
            attempts.update(session.raw.execute(CLAIM.format(only=only), {**params, "ids": list(record_ids)}))
        if limit > 0:
            attempts.update(session.raw.execute(CLAIM.format(only="LIMIT %(limit)s"), params))
        return attempts

    @contextmanager
    def unguarded(self, session: PgSession) -> Iterator[None]:
        session.raw.execute("SELECT set_config('keytrail.prune', 'on', true)")  # this transaction only
        yield
        session.raw.execute("SELECT set_config('keytrail.prune', 'off', true)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _insert(
    conn: PgConnection, chained: list[AuditRecord], heads: dict[str, ChainHead], route: Router, now: str
) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
    # One INSERT per record, pipelined (one round trip for the batch): numbered in exactly the chain's order.
    last: dict[str, int] = {}
    with conn.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({', '.join(['%s'] * 15)}) RETURNING seq",
            [record_row(record) for record in chained],
            returning=True,
        )
        for record in chained:
            row = cursor.fetchone()
            assert row is not None
            last[record.tenant] = int(row[0])
            cursor.nextset()
    for tenant, seq in last.items():
        heads[tenant] = replace(heads[tenant], seq=seq)
    with conn.cursor() as cursor:
        cursor.executemany(
            "UPDATE chain_heads SET seq = %s, hash = %s, length = %s WHERE tenant = %s",
            [(heads[t].seq, heads[t].hash, heads[t].length, t) for t in last],
        )
    targets = [(record.record_id, sink) for record in chained for sink in dict.fromkeys(route(record))]
    if targets:
        conn.execute(
            "INSERT INTO deliveries (record_id, sink, state, updated_at) "
            "SELECT r, s, 'pending', %s FROM unnest(%s::text[], %s::text[]) AS u(r, s) ON CONFLICT DO NOTHING",
            (now, [r for r, _ in targets], [s for _, s in targets]),
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
