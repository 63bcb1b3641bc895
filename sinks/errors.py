"""What can go wrong when a sink sends, classified once, so the deliver job only has to read the class.

SinkError
├── SinkUnavailable   network, timeout, 429, 5xx, HEC busy/auth: keep the records, retry later
├── SinkRejected      any other 4xx: these records will never be accepted; dead-letter them with the reason
└── SinkDisabled      the peer says "gone" (410): stop sending to this sink until an operator re-enables it
"""

from __future__ import annotations


class SinkError(Exception):
    """Base class; `reason` is a short, secret-free text that ends up in logs and the dead-letter list."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SinkUnavailable(SinkError):
    """Retry later. `retry_after` (seconds) is the peer's hint; `alert` marks a problem an operator must fix
    (a revoked token): the records are kept and retried slowly, and the alert is logged."""

    def __init__(self, reason: str, *, retry_after: float | None = None, alert: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.alert = alert


class SinkRejected(SinkError):
    """Never retry these records as they are: they go to the dead letters."""


class SinkDisabled(SinkError):
    """The peer asked us to stop (HTTP 410): the sink is disabled and an alert is logged."""
