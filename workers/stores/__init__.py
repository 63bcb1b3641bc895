"""Audit store backends: SQLite (default, one machine) and PostgreSQL (several machines); `open_store(url)` picks."""

from __future__ import annotations

import importlib
from pathlib import Path

from config.errors import ConfigError
from workers.stores.base import AppendResult, AuditStore, Delivery, DeliveryOutcomes, DeliveryState, RecordQuery

__all__ = [
    "AppendResult",
    "AuditStore",
    "Delivery",
    "DeliveryOutcomes",
    "DeliveryState",
    "RecordQuery",
    "open_store",
]


def open_store(url: str) -> AuditStore:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or `postgresql://…`. Applies migrations."""
    if url.startswith("sqlite:///"):
        from workers.stores.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            postgres = importlib.import_module("workers.stores.postgres")
        except ImportError as exc:
            raise ConfigError([f"audit.url: PostgreSQL store unavailable ({exc})"]) from None
        store: AuditStore = postgres.PostgresStore(url)
        return store
    raise ConfigError([f"audit.url: {url!r} is neither sqlite:///… nor postgresql://…"])
