"""The audit store contract: append-only, hash-chained records per tenant, plus per-sink delivery state."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from events.records import AuditRecord

CHECKPOINT_EVERY = 1000  # records per tenant between periodic checkpoints: one HMAC and one row per thousand


class StoreUnavailable(Exception):
    """The audit store cannot be opened or reached (the message says why, in one line)."""


class DeliveryState(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one append did: which records are new, and which deliveries are still pending, per sink."""

    new_ids: list[str]
    existing_ids: list[str]
    pending: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class Delivery:
    record_id: str
    sink: str
    state: DeliveryState
    attempts: int
    next_at: str | None
    reason: str | None
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        """One sink's delivery state of a record, as `audit show` and the HTTP API print it."""
        return {
            "sink": self.sink,
            "state": str(self.state),
            "attempts": self.attempts,
            "next_at": self.next_at,
            "reason": self.reason,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Filters shared by the CLI and the HTTP API. `topic` is a glob; `since`/`until` bound the event time.

    Order: newest stored first (seq descending) by default; `oldest_first` is seq ascending; `event_time_order` is
    (event time, seq) ascending, for one key's history. `before_seq` (with `cursor_time` in event-time order) is
    the cursor: the position of the last record of the previous page. Seq is assigned in commit order, so a page
    boundary never moves when records are appended concurrently.
    """

    tenant: str | None = None
    topic: str | None = None
    fingerprint: str | None = None
    key_prefix: str | None = None
    project_id: str | None = None
    account_id: str | None = None
    entity_type: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 100
    before_seq: int | None = None
    oldest_first: bool = False
    event_id: str | None = None
    event_time_order: bool = False
    cursor_time: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOutcomes:
    """The result of one delivery attempt for one sink, to be written in one transaction."""

    delivered: list[str] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    retrying: dict[str, tuple[str, str]] = field(default_factory=dict)  # record id -> (reason, next attempt at)


Router = Callable[[AuditRecord], Sequence[str]]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: its sequence number and its JSON (`AuditRecord.to_dict()`, sorted keys, compact)."""

    seq: int
    body: str

    def record(self) -> AuditRecord:
        return AuditRecord.from_dict(json.loads(self.body))

    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a tenant's chain; `length` counts every record ever chained (pruned ones too)."""

    tenant: str
    seq: int
    hash: str
    length: int
    checkpointed: int = 0  # `length` when the tenant's last checkpoint was written


@dataclass(frozen=True, slots=True)
class ChainRow:
    """Every stored column of one record, for `verify`: the indexed columns must agree with the body."""

    seq: int
    record_id: str
    tenant: str
    event_id: str
    topic: str
    time: str
    received_at: str
    entity_type: str
    entity_uid: str | None
    fingerprint: str | None
    key_prefix: str | None
    project_id: str | None
    account_id: str | None
    body: str
    prev_hash: str
    hash: str


class CheckpointKind(StrEnum):
    PERIODIC = "periodic"  # every N records, written by append
    MANUAL = "manual"  # `keytrail audit checkpoint`
    PRUNE = "prune"  # anchors the records `prune` removed: the chain continues from this hash


class CheckpointSigner(Protocol):
    """Signs checkpoints with a key kept outside the store (see `audit.chain.HmacSigner`)."""

    key_id: str

    def sign(self, payload: bytes) -> str: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "tenant's chain had `length` records, ending at `seq` with `hash`".

    Checkpoints chain too (`prev_signature`), so a deleted checkpoint is as visible as a deleted record.
    """

    tenant: str
    seq: int
    hash: str
    length: int
    kind: CheckpointKind
    created_at: str
    prev_signature: str
    key_id: str
    signature: str
    id: int = 0

    def payload(self) -> bytes:
        return checkpoint_payload(
            self.tenant,
            seq=self.seq,
            hash_=self.hash,
            length=self.length,
            kind=self.kind,
            created_at=self.created_at,
            prev_signature=self.prev_signature,
            key_id=self.key_id,
        )

    @classmethod
    def signed(
        cls, signer: CheckpointSigner, head: ChainHead, kind: CheckpointKind, created_at: str, prev_signature: str
    ) -> Checkpoint:
        payload = checkpoint_payload(
            head.tenant,
            seq=head.seq,
            hash_=head.hash,
            length=head.length,
            kind=kind,
            created_at=created_at,
            prev_signature=prev_signature,
            key_id=signer.key_id,
        )
        return cls(
            head.tenant,
            head.seq,
            head.hash,
            head.length,
            kind,
            created_at,
            prev_signature,
            signer.key_id,
            signer.sign(payload),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "seq": self.seq,
            "hash": self.hash,
            "length": self.length,
            "kind": str(self.kind),
            "created_at": self.created_at,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def checkpoint_payload(
    tenant: str, *, seq: int, hash_: str, length: int, kind: str, created_at: str, prev_signature: str, key_id: str
) -> bytes:
    """The exact bytes a checkpoint signature covers (a JSON array: unambiguous whatever a tenant is called)."""
    fields = ["keytrail-checkpoint/1", tenant, seq, hash_, length, str(kind), created_at, prev_signature, key_id]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ChainPlace:
    """Where a record sits in its tenant's chain, and its neighbours as stored (for `audit show`)."""

    seq: int
    position: int  # 1-based, counting pruned records
    previous: tuple[str, str] | None  # (record id, hash) of the record before it, if still stored
    next: tuple[str, str] | None  # (record id, prev_hash) of the record after it
    checkpoint: Checkpoint | None  # the first checkpoint at or after this record
    anchor: Checkpoint | None  # the latest prune anchor of the tenant


@dataclass(frozen=True, slots=True)
class PruneResult:
    tenant: str
    removed: int
    undelivered: int  # deliveries of removed records that were not delivered (dropped with them)
    anchor: Checkpoint | None  # None when nothing was old enough (or on a dry run)


class ChainSnapshot(Protocol):
    """A consistent read-only view of the chains (one read transaction), for verify."""

    def tenants(self) -> list[str]:
        """Every tenant named by a chain head, a record or a checkpoint."""
        ...

    def head(self, tenant: str) -> ChainHead | None: ...

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        """The tenant's checkpoints in the order they were written."""
        ...

    def rows(self, tenant: str) -> Generator[ChainRow, None, None]:
        """The tenant's records in seq order, streamed."""
        ...


class AuditStore(Protocol):
    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        """Store records not stored yet (idempotent on tenant + event id), chaining each after its tenant's
        head, and create a pending delivery for each sink `route` names. One transaction. With a signer, a
        periodic checkpoint is written in the same transaction whenever a tenant's chain grew by N records."""
        ...

    def get(self, record_ids: Sequence[str]) -> list[AuditRecord]: ...

    def search(self, query: RecordQuery) -> list[tuple[int, AuditRecord]]:
        """Matching records with their sequence numbers, newest first unless `oldest_first`."""
        ...

    def count(self, query: RecordQuery) -> int:
        """How many records match (the cursor counts, the limit does not)."""
        ...

    def stream(self, query: RecordQuery, *, limit: int | None = None) -> Iterator[StoredRecord]:
        """All matching records in the query's order, read from one snapshot in batches (a server-side cursor on
        PostgreSQL): memory stays flat whatever the size. `query.limit` is ignored; `limit` caps the total."""
        ...

    def claim(
        self, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, lease_seconds: float
    ) -> list[tuple[AuditRecord, int]]:
        """Lease to `owner`, for `lease_seconds`, what this sink still owes (pending or retrying): these records
        first, then up to `limit` others read straight off the (sink, state) index (the sweep that lets one job
        carry what later batches added). Returns them with the attempts made so far, in one write transaction.

        A delivery leased to another owner is left out until its lease expires: two jobs never send the same
        record. One leased to `owner` itself (a retried or recovered run of the same job) is taken again."""
        ...

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes, *, owner: str | None = None) -> None:
        """Write one attempt's outcomes and release their leases. With `owner`, only deliveries still leased to it
        are written: a job whose lease was taken over (it outlived its lease) does not overwrite the new owner's."""
        ...

    def deliveries(self, record_id: str) -> list[Delivery]: ...

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
        """Deliveries in these states with their records, most recently updated first. `topic` is a glob;
        `since` bounds the delivery's last update (when it died, for dead letters)."""
        ...

    def reset_deliveries(self, sink: str, record_ids: Sequence[str]) -> list[str]:
        """Put these records' dead or retrying deliveries to `sink` back to pending with no attempts made and no
        lease; returns the record ids that were reset (the others were pending, delivered or unknown)."""
        ...

    def count_deliveries(self) -> dict[str, dict[str, int]]:
        """sink -> state -> number of deliveries."""
        ...

    def locate(self, record_id: str) -> ChainPlace | None:
        """The record's place in its tenant's chain, or None when no such record is stored."""
        ...

    def snapshot(self) -> AbstractContextManager[ChainSnapshot]:
        """A consistent read-only view of every chain, on its own connection."""
        ...

    def write_checkpoints(
        self, signer: CheckpointSigner, kind: CheckpointKind = CheckpointKind.MANUAL, *, tenant: str | None = None
    ) -> list[Checkpoint]:
        """Sign and store a checkpoint of each tenant's head that moved since its last checkpoint."""
        ...

    def prune(
        self, before: str, signer: CheckpointSigner, *, tenant: str | None = None, dry_run: bool = False
    ) -> list[PruneResult]:
        """Remove each tenant's oldest records received before `before` (a prefix of its chain, so the rest
        stays verifiable from a signed prune anchor), with their deliveries. The only path that deletes records."""
        ...

    def close(self) -> None: ...
