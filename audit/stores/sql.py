"""The one SQL audit store: every statement the `AuditStore` contract needs, run through a backend's `Dialect`.

SQLite and PostgreSQL share these statements word for word; `audit.stores.sqlite` and `audit.stores.postgres`
supply only their connections, locking, migrations and the few statements whose syntax differs
(see `audit.stores.dialect`).
"""

# ruff: noqa: S608 - SQL text is built only from this package's constants and placeholders; values are always bound.
from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Generic

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
)
from audit.stores.dialect import C, Dialect, Session
from audit.stores.tables import (
    CHAIN_COLUMNS,
    CHECKPOINT_COLUMNS,
    DELIVERY_COLUMNS,
    HEAD_COLUMNS,
    chain_row,
    checkpoint_from_row,
    checkpoint_row,
    deliveries_where,
    delivery_from_row,
    now,
    outcome_rows,
    query_order_by,
    query_where,
    record_from_body,
)
from events.records import AuditRecord

log = structlog.get_logger("keytrail.audit")
PAST_EVERY_SEQ = 2**62  # a seq above any stored one


class SqlStore(Generic[C]):
    """An `AuditStore` on one SQL database; `dialect` is the backend (opened, migrated) and owns its connections."""

    def __init__(
        self, dialect: Dialect[C], *, signer: CheckpointSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        self.dialect = dialect
        self.signer = signer
        self.checkpoint_every = max(1, checkpoint_every)

    # ---- appending ------------------------------------------------------------------------------------------

    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        if not records:
            return AppendResult([], [], {})
        at = now()
        written: list[Checkpoint] = []
        with self.dialect.write() as session:
            chained = self.dialect.chain(session, records, route, at)
            if chained.records and self.signer:
                for head in chained.heads.values():
                    if head.length - head.checkpointed >= self.checkpoint_every:
                        written.append(insert_checkpoint(session, self.signer, head, CheckpointKind.PERIODIC, at))
            # A new record's deliveries are all pending; only those of records stored before are looked up (by
            # primary key: a filter on state would read every pending row of a busy store).
            pending: dict[str, list[str]] = {}
            for record in chained.records:
                for sink in dict.fromkeys(route(record)):
                    pending.setdefault(sink, []).append(record.record_id)
            new_ids = [record.record_id for record in chained.records]
            fresh = set(new_ids)  # an id both new and existing is a duplicate of a record new in this batch
            stored_before = list(dict.fromkeys(rid for rid in chained.existing_ids if rid not in fresh))
            for condition, params in self.dialect.any_of("record_id", stored_before):
                for sink, record_id, state in session.execute(
                    f"SELECT sink, record_id, state FROM deliveries WHERE {condition}", params
                ):
                    if state == DeliveryState.PENDING:
                        pending.setdefault(sink, []).append(record_id)
        log_checkpoints(written)
        return AppendResult(new_ids, chained.existing_ids, pending)

    # ---- reading --------------------------------------------------------------------------------------------

    def get(self, record_ids: Sequence[str]) -> list[AuditRecord]:
        found: dict[str, AuditRecord] = {}
        with self.dialect.read() as session:
            for condition, params in self.dialect.any_of("record_id", list(record_ids)):
                rows = session.execute(f"SELECT record_id, body FROM records WHERE {condition}", params)
                found.update((rid, record_from_body(body)) for rid, body in rows)
        return [found[rid] for rid in record_ids if rid in found]

    def search(self, query: RecordQuery) -> list[tuple[int, AuditRecord]]:
        where, params = query_where(query)
        with self.dialect.read() as session:
            rows = session.all(
                f"SELECT seq, body FROM records{where}{query_order_by(query)} LIMIT ?", [*params, query.limit]
            )
        return [(seq, record_from_body(body)) for seq, body in rows]

    def count(self, query: RecordQuery) -> int:
        where, params = query_where(query)
        with self.dialect.read() as session:
            row = session.one(f"SELECT count(*) FROM records{where}", params)
        return int(row[0]) if row else 0

    def stream(self, query: RecordQuery, *, limit: int | None = None) -> Iterator[StoredRecord]:
        where, params = query_where(query)
        sql = f"SELECT seq, body FROM records{where}{query_order_by(query)}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.dialect.reader() as session:
            for seq, body in self.dialect.stream(session, sql, params, "keytrail_stream"):
                yield StoredRecord(seq, body)

    def locate(self, record_id: str) -> ChainPlace | None:
        with self.dialect.read() as session:
            found = session.one("SELECT seq, tenant FROM records WHERE record_id = ?", (record_id,))
            if found is None:
                return None
            seq, tenant = found
            anchor = latest_anchor(session, tenant)
            before = session.one(
                "SELECT count(*) FROM records WHERE tenant = ? AND seq <= ? AND seq > ?",
                (tenant, seq, anchor.seq if anchor else 0),
            )
            previous = session.one(
                "SELECT record_id, hash FROM records WHERE tenant = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
                (tenant, seq),
            )
            following = session.one(
                "SELECT record_id, prev_hash FROM records WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT 1",
                (tenant, seq),
            )
            covering = session.one(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? AND seq >= ? ORDER BY seq, id LIMIT 1",
                (tenant, seq),
            )
        return ChainPlace(
            seq=seq,
            position=(anchor.length if anchor else 0) + (int(before[0]) if before else 0),
            previous=(previous[0], previous[1]) if previous else None,
            next=(following[0], following[1]) if following else None,
            checkpoint=checkpoint_from_row(covering) if covering else None,
            anchor=anchor,
        )

    @contextmanager
    def snapshot(self) -> Iterator[SqlSnapshot[C]]:
        with self.dialect.reader() as session:
            yield SqlSnapshot(session, self.dialect)

    # ---- deliveries -----------------------------------------------------------------------------------------

    def claim(
        self, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, lease_seconds: float
    ) -> list[tuple[AuditRecord, int]]:
        ids = list(dict.fromkeys(record_ids))
        bodies: dict[str, str] = {}
        with self.dialect.write() as session:
            attempts = self.dialect.lease(session, sink, ids, limit=limit, owner=owner, seconds=max(0.0, lease_seconds))
            for condition, params in self.dialect.any_of("record_id", list(attempts)):
                bodies.update(session.execute(f"SELECT record_id, body FROM records WHERE {condition}", params))
        return [(record_from_body(bodies[rid]), made) for rid, made in attempts.items() if rid in bodies]

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes, *, owner: str | None = None) -> None:
        rows = outcome_rows(sink, outcomes, now())
        if not rows:
            return
        mine = " AND lease_owner = ?" if owner is not None else ""
        with self.dialect.write() as session:
            session.executemany(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_at = ?, reason = ?, updated_at = ?, "
                f"lease_owner = NULL, lease_until = NULL WHERE record_id = ? AND sink = ?{mine}",
                [(*row, owner) for row in rows] if owner is not None else rows,
            )

    def deliveries(self, record_id: str) -> list[Delivery]:
        with self.dialect.read() as session:
            rows = session.all(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.record_id = ? ORDER BY d.sink", (record_id,)
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
        where, params = deliveries_where(states=states, sink=sink, topic=topic, since=since, record_id=record_id)
        with self.dialect.read() as session:
            rows = session.all(
                f"SELECT {DELIVERY_COLUMNS}, r.body FROM deliveries d JOIN records r ON r.record_id = d.record_id"
                f"{where} ORDER BY d.updated_at DESC, r.seq DESC, d.sink LIMIT ?",
                [*params, limit],
            )
        return [(delivery_from_row(row), record_from_body(row[7])) for row in rows]

    def reset_deliveries(self, sink: str, record_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(record_ids))
        reset: set[str] = set()
        at = now()
        with self.dialect.write() as session:
            for condition, params in self.dialect.any_of("record_id", ids):
                rows = session.all(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = NULL, reason = NULL, "
                    "lease_owner = NULL, lease_until = NULL, updated_at = ? "
                    f"WHERE sink = ? AND state IN ('dead', 'retrying') AND {condition} RETURNING record_id",
                    [at, sink, *params],
                )
                reset.update(rid for (rid,) in rows)
        return [rid for rid in ids if rid in reset]

    def count_deliveries(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self.dialect.read() as session:
            rows = session.all("SELECT sink, state, count(*) FROM deliveries GROUP BY sink, state")
        for sink, state, number in rows:
            counts.setdefault(sink, {})[state] = int(number)
        return counts

    # ---- checkpoints and retention --------------------------------------------------------------------------

    def write_checkpoints(
        self, signer: CheckpointSigner, kind: CheckpointKind = CheckpointKind.MANUAL, *, tenant: str | None = None
    ) -> list[Checkpoint]:
        at = now()
        written: list[Checkpoint] = []
        with self.dialect.write() as session:
            for head in heads(session, tenant, lock=self.dialect.row_lock):
                if head.length > head.checkpointed:
                    written.append(insert_checkpoint(session, signer, head, kind, at))
        log_checkpoints(written)
        return written

    def prune(
        self, before: str, signer: CheckpointSigner, *, tenant: str | None = None, dry_run: bool = False
    ) -> list[PruneResult]:
        at = now()
        results: list[PruneResult] = []
        with self.dialect.write() as session:
            for head in heads(session, tenant, lock=self.dialect.row_lock):
                anchor = latest_anchor(session, head.tenant)
                # The prefix ends at the first record received at/after `before`: the chain is cut, never holed.
                cut = session.one(
                    "SELECT seq FROM records WHERE tenant = ? AND received_at >= ? ORDER BY seq LIMIT 1",
                    (head.tenant, before),
                )
                last = session.one(
                    "SELECT seq, hash FROM records WHERE tenant = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
                    (head.tenant, cut[0] if cut else PAST_EVERY_SEQ),
                )
                if last is None:
                    results.append(PruneResult(head.tenant, 0, 0, None))
                    continue
                doomed = "SELECT record_id FROM records WHERE tenant = ? AND seq <= ?"
                counted = session.one(
                    f"SELECT (SELECT count(*) FROM records WHERE tenant = ? AND seq <= ?), "
                    f"(SELECT count(*) FROM deliveries WHERE state != 'delivered' AND record_id IN ({doomed}))",
                    (head.tenant, last[0], head.tenant, last[0]),
                )
                removed, undelivered = int(counted[0]), int(counted[1])
                if dry_run:
                    results.append(PruneResult(head.tenant, removed, undelivered, None))
                    continue
                end = ChainHead(head.tenant, last[0], last[1], (anchor.length if anchor else 0) + removed)
                written = insert_checkpoint(session, signer, end, CheckpointKind.PRUNE, at, move_head=False)
                session.execute(f"DELETE FROM deliveries WHERE record_id IN ({doomed})", (head.tenant, last[0]))
                with self.dialect.unguarded(session):
                    session.execute("DELETE FROM records WHERE tenant = ? AND seq <= ?", (head.tenant, last[0]))
                results.append(PruneResult(head.tenant, removed, undelivered, written))
        log_checkpoints([r.anchor for r in results if r.anchor])
        return results

    def close(self) -> None:
        self.dialect.close()


class SqlSnapshot(Generic[C]):
    """Chains as of one read transaction on a private connection."""

    def __init__(self, session: Session[C], dialect: Dialect[C]) -> None:
        self.session = session
        self._dialect = dialect

    def tenants(self) -> list[str]:
        rows = self.session.all(
            "SELECT tenant FROM chain_heads UNION SELECT DISTINCT tenant FROM records "
            "UNION SELECT DISTINCT tenant FROM checkpoints ORDER BY 1"
        )
        return [tenant for (tenant,) in rows]

    def head(self, tenant: str) -> ChainHead | None:
        found = heads(self.session, tenant)
        return found[0] if found else None

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        rows = self.session.all(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? ORDER BY id", (tenant,))
        return [checkpoint_from_row(row) for row in rows]

    def rows(self, tenant: str) -> Generator[ChainRow, None, None]:
        sql = f"SELECT {CHAIN_COLUMNS} FROM records WHERE tenant = ? ORDER BY seq"
        for row in self._dialect.stream(self.session, sql, (tenant,), "keytrail_chain"):
            yield chain_row(row)


def migrate(session: Session[C], migrations: Sequence[str], run: Callable[[str], object]) -> None:
    """Within a write: run the migrations not run yet, in order, numbering each in `schema_version`. A released
    migration is never edited, only followed by new ones."""
    session.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = session.one("SELECT max(version) FROM schema_version")
    current = (row[0] if row else None) or 0
    for version, script in enumerate(migrations, start=1):
        if version > current:
            run(script)
            session.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def heads(session: Session[C], tenant: str | None, *, lock: str = "") -> list[ChainHead]:
    """One tenant's chain head (or none), or every tenant's in tenant order; `lock` is the dialect's `row_lock`."""
    suffix = " ORDER BY tenant" + lock
    sql = f"SELECT {HEAD_COLUMNS} FROM chain_heads"
    rows = session.all(f"{sql} WHERE tenant = ?{suffix}", (tenant,)) if tenant else session.all(sql + suffix)
    return [ChainHead(*row) for row in rows]


def latest_anchor(session: Session[C], tenant: str) -> Checkpoint | None:
    row = session.one(
        f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? AND kind = 'prune' ORDER BY id DESC LIMIT 1",
        (tenant,),
    )
    return checkpoint_from_row(row) if row else None


def insert_checkpoint(
    session: Session[C],
    signer: CheckpointSigner,
    head: ChainHead,
    kind: CheckpointKind,
    at: str,
    *,
    move_head: bool = True,
) -> Checkpoint:
    """Sign `head` after the tenant's last checkpoint and store it; `move_head` records it on the chain head."""
    row = session.one("SELECT signature FROM checkpoints WHERE tenant = ? ORDER BY id DESC LIMIT 1", (head.tenant,))
    checkpoint = Checkpoint.signed(signer, head, kind, at, row[0] if row else "")
    (inserted,) = session.all(
        f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS.removeprefix('id, ')}) "
        f"VALUES ({', '.join('?' * 9)}) RETURNING id",
        checkpoint_row(checkpoint),
    )
    if move_head:
        session.execute("UPDATE chain_heads SET checkpointed = ? WHERE tenant = ?", (head.length, head.tenant))
    return replace(checkpoint, id=int(inserted[0]))


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
