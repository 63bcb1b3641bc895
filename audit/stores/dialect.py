"""What differs between the SQL backends under the one audit SQL layer: the `Dialect` contract and the `Session`.

`audit.stores.sql` holds every statement both backends run, written once with `?` placeholders. A `Session` runs
them on one driver connection, in the driver's placeholder style. A `Dialect` owns what is really a backend's
own: its connections and transactions, how a batch is chained under its locking, how deliveries are leased
(`SKIP LOCKED` or a write lock), how a list of ids is bound, and how `prune` gets past the append-only guard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from audit.stores.base import ChainHead, Router
from events.records import AuditRecord

STREAM_BATCH = 2000  # rows fetched at a time when streaming an export or a chain


class Cursor(Protocol):
    """The part of a DB-API cursor the SQL layer uses (sqlite3's and psycopg's alike)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class ManyCursor(Protocol):
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> object: ...

    def close(self) -> None: ...


class Connection(Protocol):
    """The part of a driver connection the SQL layer uses: `sqlite3.Connection` and `psycopg.Connection`."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def cursor(self) -> ManyCursor: ...


C = TypeVar("C", bound=Connection)


@dataclass(frozen=True, slots=True)
class Session(Generic[C]):
    """One driver connection as the SQL layer uses it: statements are written with `?` placeholders and bound
    values only; `placeholder` is what the driver wants instead (`%s` for psycopg)."""

    raw: C
    placeholder: str = "?"

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(self.sql(sql), params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row, or None."""
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cursor = self.raw.cursor()
        try:
            cursor.executemany(self.sql(sql), rows)
        finally:
            cursor.close()


@dataclass(frozen=True, slots=True)
class Chained:
    """What `Dialect.chain` stored: the new records as chained, the ids of those already stored, and the heads
    it read (moved to their last new record for the tenants that grew)."""

    records: list[AuditRecord]
    existing_ids: list[str]
    heads: dict[str, ChainHead]


class Dialect(Protocol[C]):
    """One backend under the SQL layer. Its methods are safe to call from several threads."""

    row_lock: str  # appended to a SELECT of chain heads in a write: " FOR UPDATE" where rows lock, else ""

    def write(self) -> AbstractContextManager[Session[C]]:
        """The store's connection in one write transaction, serialized with the store's other writers."""
        ...

    def read(self) -> AbstractContextManager[Session[C]]:
        """The store's connection for a few statements outside a write (no snapshot promised)."""
        ...

    def reader(self) -> AbstractContextManager[Session[C]]:
        """A connection of its own in one read-only transaction: a consistent snapshot that blocks no writer."""
        ...

    def stream(self, session: Session[C], sql: str, params: Sequence[Any], name: str) -> Iterator[Any]:
        """The rows of one SELECT, fetched STREAM_BATCH at a time (`name` names a server-side cursor)."""
        ...

    def any_of(self, column: str, values: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        """`column` is one of `values`, as (condition, parameters) to run one after the other; none when `values`
        is empty. The condition uses `?` and goes last in its statement."""
        ...

    def chain(self, session: Session[C], records: Sequence[AuditRecord], route: Router, now: str) -> Chained:
        """Within a write: store the records not stored yet (idempotent on tenant + event id), each chained after
        its tenant's head in seq order, move the heads, and create a pending delivery for each sink `route` names."""
        ...

    def lease(
        self, session: Session[C], sink: str, record_ids: Sequence[str], *, limit: int, owner: str, seconds: float
    ) -> dict[str, int]:
        """Within a write: lease to `owner` what `sink` owes among `record_ids`, then up to `limit` others; the
        leased record ids with the attempts made so far. The rules are `AuditStore.claim`'s."""
        ...

    def unguarded(self, session: Session[C]) -> AbstractContextManager[None]:
        """Within a write: the append-only guard on records lifted for the statements inside, in this transaction
        only (the one path that deletes records: `prune`)."""
        ...

    def close(self) -> None: ...
