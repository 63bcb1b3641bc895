"""Audit store backends: SQLite (default, one machine) and PostgreSQL (several machines); `open_store(url)` picks."""

from __future__ import annotations

import importlib
from pathlib import Path

from audit.stores.base import (
    CHECKPOINT_EVERY,
    AppendResult,
    AuditStore,
    ChainHead,
    ChainPlace,
    Checkpoint,
    CheckpointKind,
    CheckpointSigner,
    Delivery,
    DeliveryOutcomes,
    DeliveryState,
    PruneResult,
    RecordQuery,
    StoredRecord,
    StoreUnavailable,
)
from config.errors import ConfigError
from config.settings import display_url

__all__ = [
    "AppendResult",
    "AuditStore",
    "ChainHead",
    "ChainPlace",
    "Checkpoint",
    "CheckpointKind",
    "CheckpointSigner",
    "Delivery",
    "DeliveryOutcomes",
    "DeliveryState",
    "PruneResult",
    "RecordQuery",
    "StoreUnavailable",
    "StoredRecord",
    "open_store",
]


def open_store(
    url: str, *, signer: CheckpointSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
) -> AuditStore:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or `postgresql://…`. Applies migrations.

    With a `signer`, append writes a signed checkpoint whenever a tenant's chain grew by `checkpoint_every`."""
    if url.startswith("sqlite:///"):
        from audit.stores.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")), signer=signer, checkpoint_every=checkpoint_every)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            postgres = importlib.import_module("audit.stores.postgres")
        except ImportError as exc:
            raise ConfigError([f"audit.url: PostgreSQL store unavailable ({exc})"]) from None
        store: AuditStore = postgres.PostgresStore(url, signer=signer, checkpoint_every=checkpoint_every)
        return store
    raise ConfigError([f"audit.url: {display_url(url)!r} is neither sqlite:///… nor postgresql://…"])
