"""The audit store contract: append-only, hash-chained records per tenant, plus per-sink delivery state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from workers.records import AuditRecord


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


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Filters shared by the CLI and the HTTP API. `topic` is a glob; `after_seq` pages newest-first."""

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


@dataclass(frozen=True, slots=True)
class DeliveryOutcomes:
    """The result of one delivery attempt for one sink, to be written in one transaction."""

    delivered: list[str] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    retrying: dict[str, tuple[str, str]] = field(default_factory=dict)  # record id -> (reason, next attempt at)


Router = Callable[[AuditRecord], Sequence[str]]


class AuditStore(Protocol):
    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        """Store records not stored yet (idempotent on tenant + event id), chaining each after its tenant's
        head, and create a pending delivery for each sink `route` names. One transaction."""
        ...

    def get(self, record_ids: Sequence[str]) -> list[AuditRecord]: ...

    def search(self, query: RecordQuery) -> list[tuple[int, AuditRecord]]:
        """Matching records with their sequence numbers, newest first unless `oldest_first`."""
        ...

    def to_deliver(self, sink: str, record_ids: Sequence[str]) -> list[tuple[AuditRecord, int]]:
        """Of these records, the ones this sink still owes (pending or retrying), with attempts made so far."""
        ...

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes) -> None: ...

    def deliveries(self, record_id: str) -> list[Delivery]: ...

    def close(self) -> None: ...
