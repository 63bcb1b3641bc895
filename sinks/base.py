"""The Sink contract: one `send` that turns a batch of records into a per-record outcome."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, Self, runtime_checkable

from config.settings import SinkSettings
from events.records import AuditRecord


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass
class DeliveryReport:
    """Per-record outcome of one `send`. Records a sink did not mention count as RETRY (never silently lost)."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    # The peer's hint for the retry (Retry-After), in seconds.
    retry_after: float | None = None

    @classmethod
    def all(cls, records: Iterable[AuditRecord], outcome: Outcome, reason: str | None = None) -> DeliveryReport:
        report = cls()
        for record in records:
            report.set(record.record_id, outcome, reason)
        return report

    def set(self, record_id: str, outcome: Outcome, reason: str | None = None) -> None:
        self.outcomes[record_id] = outcome
        if reason is not None:
            self.reasons[record_id] = reason
        else:
            self.reasons.pop(record_id, None)

    def merge(self, other: DeliveryReport) -> None:
        for record_id, outcome in other.outcomes.items():
            self.set(record_id, outcome, other.reasons.get(record_id))
        if other.retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, other.retry_after)

    def ids(self, outcome: Outcome) -> list[str]:
        return [record_id for record_id, o in self.outcomes.items() if o is outcome]


@runtime_checkable
class Sink(Protocol):
    """A place records go. Built once per worker process from its settings; `send` may block on I/O.

    `send` returns a report, or raises a `SinkError` (see `sinks.errors`) when the whole batch shares one fate.
    It must not retry by itself: retries live in exactly one layer, the deliver job's RQ Retry.
    """

    name: str

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport: ...

    def close(self) -> None: ...


class SinkFactory(Protocol):
    """What a sink class offers the registry: build from settings, raising ConfigError listing every problem."""

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self: ...
