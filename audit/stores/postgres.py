"""The PostgreSQL audit store (psycopg 3): the same contract as SQLite, for workers on several machines.

Concurrency: an append locks its tenants' chain heads (`SELECT … FOR UPDATE`, in tenant order, so two appenders
never deadlock) before it reads them, so each tenant's chain grows one transaction at a time and a redelivered
event is seen by the second appender and stored once. Just before inserting, it also takes one transaction-scoped
advisory lock, held only until commit: seq numbers are then given out in commit order, which is what lets `tail`
and cursors read "everything after seq N" without missing a record committed late with a lower number.

Append-only: a trigger rejects UPDATE, DELETE and TRUNCATE on records and checkpoints. `prune` alone deletes, by
setting `keytrail.prune` for its own transaction (SET LOCAL), which the trigger honours for DELETE on records only.
"""

# ruff: noqa: S608 - SQL text is built only from this module's constants and placeholders; values are always bound.
from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import IsolationLevel

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
from audit.stores.sqlite import (
    CHAIN_COLUMNS,
    CHECKPOINT_COLUMNS,
    DELIVERY_COLUMNS,
    RECORD_COLUMNS,
    STREAM_BATCH,
    _now,
    chain_row,
    checkpoint_from_row,
    deliveries_where,
    delivery_from_row,
    log_checkpoints,
    outcome_rows,
    query_order_by,
    query_where,
    record_from_body,
    record_row,
)
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
)

HEAD_COLUMNS = "tenant, seq, hash, length, checkpointed"
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


class PostgresStore:
    def __init__(
        self, url: str, *, signer: CheckpointSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        self.url = url
        self.signer = signer
        self.checkpoint_every = max(1, checkpoint_every)
        self._lock = threading.RLock()
        self._conn = self._connect(autocommit=True)
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self, **options: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, connect_timeout=10, **options)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL does not answer: {_first_line(exc)}") from None

    def _connection(self) -> psycopg.Connection[Any]:
        """The shared connection, reopened if the server dropped it (a restart must not wedge a worker)."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect(autocommit=True)
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                yield conn

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own in one REPEATABLE READ, READ ONLY transaction: one consistent snapshot."""
        conn = self._connect()
        try:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            yield conn
        finally:
            conn.close()

    def _migrate(self) -> None:
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = (row[0] if row else None) or 0
            for version, script in enumerate(MIGRATIONS, start=1):
                if version > current:
                    conn.execute(script)  # no parameters: sent as one simple query, several statements allowed
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    # ---- appending ------------------------------------------------------------------------------------------

    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        new_ids: list[str] = []
        existing_ids: list[str] = []
        written: list[Checkpoint] = []
        if not records:
            return AppendResult(new_ids, existing_ids, {})
        now = _now()
        with self._transaction() as conn:
            tenants = sorted({r.tenant for r in records})
            conn.execute(
                "INSERT INTO chain_heads (tenant, seq, hash) SELECT t, 0, %s FROM unnest(%s::text[]) AS t "
                "ORDER BY t ON CONFLICT (tenant) DO NOTHING",
                (GENESIS_HASH, tenants),
            )
            heads = {
                row[0]: ChainHead(*row)
                for row in conn.execute(
                    f"SELECT {HEAD_COLUMNS} FROM chain_heads WHERE tenant = ANY(%s) ORDER BY tenant FOR UPDATE",
                    (tenants,),
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
                new_ids.append(record.record_id)
            if chained:
                self._insert(conn, chained, heads, route, now)
                if self.signer:
                    for head in heads.values():
                        if head.length - head.checkpointed >= self.checkpoint_every:
                            written.append(_insert_checkpoint(conn, self.signer, head, CheckpointKind.PERIODIC, now))
            # A new record's deliveries are all pending; only those of records stored before are looked up (by
            # primary key: a filter on state would read every pending row of a busy store).
            pending: dict[str, list[str]] = {}
            for record in chained:
                for sink in dict.fromkeys(route(record)):
                    pending.setdefault(sink, []).append(record.record_id)
            fresh = set(new_ids)
            stored_before = list(dict.fromkeys(rid for rid in existing_ids if rid not in fresh))
            if stored_before:
                for sink, record_id, state in conn.execute(
                    "SELECT sink, record_id, state FROM deliveries WHERE record_id = ANY(%s)", (stored_before,)
                ):
                    if state == DeliveryState.PENDING:
                        pending.setdefault(sink, []).append(record_id)
        log_checkpoints(written)
        return AppendResult(new_ids, existing_ids, pending)

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        chained: list[AuditRecord],
        heads: dict[str, ChainHead],
        route: Router,
        now: str,
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

    # ---- reading --------------------------------------------------------------------------------------------

    def get(self, record_ids: Sequence[str]) -> list[AuditRecord]:
        with self._lock:
            rows = self._connection().execute(
                "SELECT record_id, body FROM records WHERE record_id = ANY(%s)", (list(record_ids),)
            )
            found = {rid: record_from_body(body) for rid, body in rows}
        return [found[rid] for rid in record_ids if rid in found]

    def search(self, query: RecordQuery) -> list[tuple[int, AuditRecord]]:
        where, params = query_where(query, "%s")
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT seq, body FROM records{where}{query_order_by(query)} LIMIT %s", [*params, query.limit]
                )
                .fetchall()
            )
        return [(seq, record_from_body(body)) for seq, body in rows]

    def count(self, query: RecordQuery) -> int:
        where, params = query_where(query, "%s")
        with self._lock:
            row = self._connection().execute(f"SELECT count(*) FROM records{where}", params).fetchone()
        return int(row[0]) if row else 0

    def stream(self, query: RecordQuery, *, limit: int | None = None) -> Iterator[StoredRecord]:
        where, params = query_where(query, "%s")
        sql = f"SELECT seq, body FROM records{where}{query_order_by(query)}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._reader() as conn, conn.cursor(name="keytrail_stream") as cursor:
            cursor.itersize = STREAM_BATCH  # a server-side cursor: rows arrive in batches, never all at once
            cursor.execute(sql, params)
            for seq, body in cursor:
                yield StoredRecord(seq, body)

    def locate(self, record_id: str) -> ChainPlace | None:
        with self._lock:
            conn = self._connection()
            found = conn.execute("SELECT seq, tenant FROM records WHERE record_id = %s", (record_id,)).fetchone()
            if found is None:
                return None
            seq, tenant = found
            anchor = _latest_anchor(conn, tenant)
            before = conn.execute(
                "SELECT count(*) FROM records WHERE tenant = %s AND seq <= %s AND seq > %s",
                (tenant, seq, anchor.seq if anchor else 0),
            ).fetchone()
            previous = conn.execute(
                "SELECT record_id, hash FROM records WHERE tenant = %s AND seq < %s ORDER BY seq DESC LIMIT 1",
                (tenant, seq),
            ).fetchone()
            following = conn.execute(
                "SELECT record_id, prev_hash FROM records WHERE tenant = %s AND seq > %s ORDER BY seq LIMIT 1",
                (tenant, seq),
            ).fetchone()
            covering = conn.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = %s AND seq >= %s "
                "ORDER BY seq, id LIMIT 1",
                (tenant, seq),
            ).fetchone()
        return ChainPlace(
            seq=seq,
            position=(anchor.length if anchor else 0) + (before[0] if before else 0),
            previous=(previous[0], previous[1]) if previous else None,
            next=(following[0], following[1]) if following else None,
            checkpoint=checkpoint_from_row(covering) if covering else None,
            anchor=anchor,
        )

    @contextmanager
    def snapshot(self) -> Iterator[PostgresSnapshot]:
        with self._reader() as conn:
            yield PostgresSnapshot(conn)

    # ---- deliveries -----------------------------------------------------------------------------------------

    def claim(
        self, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, lease_seconds: float
    ) -> list[tuple[AuditRecord, int]]:
        params = {"sink": sink, "owner": owner, "lease": max(0.0, lease_seconds), "limit": limit}
        attempts: dict[str, int] = {}
        with self._transaction() as conn:
            ids = list(dict.fromkeys(record_ids))
            if ids:
                attempts.update(conn.execute(CLAIM.format(only="AND record_id = ANY(%(ids)s)"), {**params, "ids": ids}))
            if limit > 0:
                attempts.update(conn.execute(CLAIM.format(only="LIMIT %(limit)s"), params))
            bodies = dict(
                conn.execute("SELECT record_id, body FROM records WHERE record_id = ANY(%s)", (list(attempts),))
            )
        return [(record_from_body(bodies[rid]), made) for rid, made in attempts.items() if rid in bodies]

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes, *, owner: str | None = None) -> None:
        rows = outcome_rows(sink, outcomes, _now())
        if not rows:
            return
        mine = " AND lease_owner = %s" if owner is not None else ""
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE deliveries SET state = %s, attempts = attempts + 1, next_at = %s, reason = %s, "
                f"updated_at = %s, lease_owner = NULL, lease_until = NULL WHERE record_id = %s AND sink = %s{mine}",
                [(*row, owner) for row in rows] if owner is not None else rows,
            )

    def deliveries(self, record_id: str) -> list[Delivery]:
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.record_id = %s ORDER BY d.sink",
                    (record_id,),
                )
                .fetchall()
            )
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
        where, params = deliveries_where(
            states=states, sink=sink, topic=topic, since=since, record_id=record_id, placeholder="%s"
        )
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {DELIVERY_COLUMNS}, r.body FROM deliveries d JOIN records r ON r.record_id = d.record_id"
                    f"{where} ORDER BY d.updated_at DESC, r.seq DESC, d.sink LIMIT %s",
                    [*params, limit],
                )
                .fetchall()
            )
        return [(delivery_from_row(row), record_from_body(row[7])) for row in rows]

    def reset_deliveries(self, sink: str, record_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(record_ids))
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = NULL, reason = NULL, "
                "lease_owner = NULL, lease_until = NULL, "
                "updated_at = %s WHERE sink = %s AND state IN ('dead', 'retrying') AND record_id = ANY(%s) "
                "RETURNING record_id",
                (_now(), sink, ids),
            ).fetchall()
        reset = {rid for (rid,) in rows}
        return [rid for rid in ids if rid in reset]

    def count_deliveries(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT sink, state, count(*) FROM deliveries GROUP BY sink, state")
                .fetchall()
            )
        for sink, state, number in rows:
            counts.setdefault(sink, {})[state] = int(number)
        return counts

    # ---- checkpoints and retention --------------------------------------------------------------------------

    def write_checkpoints(
        self, signer: CheckpointSigner, kind: CheckpointKind = CheckpointKind.MANUAL, *, tenant: str | None = None
    ) -> list[Checkpoint]:
        now = _now()
        written: list[Checkpoint] = []
        with self._transaction() as conn:
            for head in _heads(conn, tenant, lock=True):
                if head.length > head.checkpointed:
                    written.append(_insert_checkpoint(conn, signer, head, kind, now))
        log_checkpoints(written)
        return written

    def prune(
        self, before: str, signer: CheckpointSigner, *, tenant: str | None = None, dry_run: bool = False
    ) -> list[PruneResult]:
        now = _now()
        results: list[PruneResult] = []
        with self._transaction() as conn:
            for head in _heads(conn, tenant, lock=True):
                anchor = _latest_anchor(conn, head.tenant)
                # The prefix ends at the first record received at/after `before`: the chain is cut, never holed.
                cut = conn.execute(
                    "SELECT seq FROM records WHERE tenant = %s AND received_at >= %s ORDER BY seq LIMIT 1",
                    (head.tenant, before),
                ).fetchone()
                last = conn.execute(
                    "SELECT seq, hash FROM records WHERE tenant = %s AND seq < %s ORDER BY seq DESC LIMIT 1",
                    (head.tenant, cut[0] if cut else 2**62),
                ).fetchone()
                if last is None:
                    results.append(PruneResult(head.tenant, 0, 0, None))
                    continue
                doomed = "SELECT record_id FROM records WHERE tenant = %s AND seq <= %s"
                counted = conn.execute(
                    f"SELECT (SELECT count(*) FROM records WHERE tenant = %s AND seq <= %s), "
                    f"(SELECT count(*) FROM deliveries WHERE state != 'delivered' AND record_id IN ({doomed}))",
                    (head.tenant, last[0], head.tenant, last[0]),
                ).fetchone()
                assert counted is not None
                removed, undelivered = int(counted[0]), int(counted[1])
                if dry_run:
                    results.append(PruneResult(head.tenant, removed, undelivered, None))
                    continue
                at = ChainHead(head.tenant, last[0], last[1], (anchor.length if anchor else 0) + removed)
                written = _insert_checkpoint(conn, signer, at, CheckpointKind.PRUNE, now, move_head=False)
                conn.execute(f"DELETE FROM deliveries WHERE record_id IN ({doomed})", (head.tenant, last[0]))
                conn.execute("SELECT set_config('keytrail.prune', 'on', true)")  # this transaction only
                conn.execute("DELETE FROM records WHERE tenant = %s AND seq <= %s", (head.tenant, last[0]))
                conn.execute("SELECT set_config('keytrail.prune', 'off', true)")
                results.append(PruneResult(head.tenant, removed, undelivered, written))
        log_checkpoints([r.anchor for r in results if r.anchor])
        return results

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresSnapshot:
    """Chains as of one REPEATABLE READ transaction on a private connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def tenants(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT tenant FROM chain_heads UNION SELECT DISTINCT tenant FROM records "
            "UNION SELECT DISTINCT tenant FROM checkpoints ORDER BY 1"
        ).fetchall()
        return [tenant for (tenant,) in rows]

    def head(self, tenant: str) -> ChainHead | None:
        heads = _heads(self._conn, tenant)
        return heads[0] if heads else None

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        rows = self._conn.execute(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = %s ORDER BY id", (tenant,)
        ).fetchall()
        return [checkpoint_from_row(row) for row in rows]

    def rows(self, tenant: str) -> Generator[ChainRow, None, None]:
        with self._conn.cursor(name="keytrail_chain") as cursor:
            cursor.itersize = STREAM_BATCH
            cursor.execute(f"SELECT {CHAIN_COLUMNS} FROM records WHERE tenant = %s ORDER BY seq", (tenant,))
            for row in cursor:
                yield chain_row(row)


def _heads(conn: psycopg.Connection[Any], tenant: str | None, *, lock: bool = False) -> list[ChainHead]:
    sql = f"SELECT {HEAD_COLUMNS} FROM chain_heads"
    suffix = " ORDER BY tenant" + (" FOR UPDATE" if lock else "")
    rows = conn.execute(f"{sql} WHERE tenant = %s{suffix}", (tenant,)) if tenant else conn.execute(sql + suffix)
    return [ChainHead(*row) for row in rows]


def _latest_anchor(conn: psycopg.Connection[Any], tenant: str) -> Checkpoint | None:
    row = conn.execute(
        f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = %s AND kind = 'prune' ORDER BY id DESC LIMIT 1",
        (tenant,),
    ).fetchone()
    return checkpoint_from_row(row) if row else None


def _insert_checkpoint(
    conn: psycopg.Connection[Any],
    signer: CheckpointSigner,
    head: ChainHead,
    kind: CheckpointKind,
    now: str,
    *,
    move_head: bool = True,
) -> Checkpoint:
    row = conn.execute(
        "SELECT signature FROM checkpoints WHERE tenant = %s ORDER BY id DESC LIMIT 1", (head.tenant,)
    ).fetchone()
    checkpoint = Checkpoint.signed(signer, head, kind, now, row[0] if row else "")
    inserted = conn.execute(
        f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS.removeprefix('id, ')}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
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
    ).fetchone()
    assert inserted is not None
    if move_head:
        conn.execute("UPDATE chain_heads SET checkpointed = %s WHERE tenant = %s", (head.length, head.tenant))
    return replace(checkpoint, id=int(inserted[0]))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
