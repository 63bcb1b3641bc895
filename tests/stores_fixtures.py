"""Fixtures for the audit suites: a store URL per backend (SQLite file, PostgreSQL schema), records, tampering.

A test module takes the fixtures by importing `store_url_fixture` (and `store_fixture`, `pg_url_fixture`); they are
named `store_url`, `store` and `pg_url` in test signatures.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from audit.chain import HmacSigner
from audit.stores import AuditStore, open_store
from events.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_DATABASE = "keytrail_test"
SIGNER = HmacSigner(b"test checkpoint key " * 2)
BACKENDS = ("sqlite", pytest.param("postgres", marks=pytest.mark.postgres))


def postgres_database() -> str:
    """The test database's URL, created if missing. Unreachable: skip, or fail when CI is set."""
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3) as admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # another process was first
                    admin.execute(f"CREATE DATABASE {PG_DATABASE}")
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and does not answer at {PG_SERVER}: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_SERVER}")
    return f"{PG_SERVER}/{PG_DATABASE}"


def postgres_schema_url() -> Iterator[str]:
    """A schema of its own in the test database (dropped after): parallel tests never see each other's tables."""
    database = postgres_database()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{database}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(name="store_url", params=BACKENDS)
def store_url_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """An empty audit store's URL, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture(name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    """An empty PostgreSQL audit store's URL (for tests that are about PostgreSQL itself)."""
    yield from postgres_schema_url()


@pytest.fixture(name="store")
def store_fixture(store_url: str) -> Iterator[AuditStore]:
    opened = open_store(store_url, signer=SIGNER, checkpoint_every=1_000_000)
    yield opened
    opened.close()


def make_record(
    n: int,
    *,
    tenant: str = "acme",
    topic: str = "api-key.created",
    time: str | None = None,
    received_at: str | None = None,
    key: str | None = None,
    project: str | None = "proj-1",
    account: str | None = "acct-1",
    entity_type: EntityType = EntityType.API_KEY,
    name: str | None = None,
) -> AuditRecord:
    """The n-th test record; `key` is a fingerprint (records never hold raw keys)."""
    when = time or f"2026-11-01T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z"
    return AuditRecord(
        record_id=f"rec_{tenant}_{n:06d}",
        event_id=f"evt-{n}",
        tenant=tenant,
        topic=topic,
        time=when,
        received_at=received_at or when,
        activity_id=Activity.CREATE,
        severity_id=Severity.INFORMATIONAL,
        entity=Entity(
            type=entity_type,
            uid=key,
            name=name,
            fingerprint=key,
            prefix="live_" if key else None,
            last4="abcd" if key else None,
        ),
        project_id=project,
        account_id=account,
        actor=Actor(uid="user-1", type="user"),
        metadata={"product": "The Auth API"},
        raw_sha256="0" * 64,
        raw_redacted={"n": n},
    )


def route_all(record: AuditRecord) -> list[str]:
    return ["archive", "splunk"]


def tamper(url: str, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Run SQL straight against the database with the append-only triggers out of the way, as an attacker with
    database access would. Statements use `?` placeholders on both backends."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            guards = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
            db.execute("BEGIN IMMEDIATE")
            for name, _ in guards:
                db.execute(f"DROP TRIGGER {name}")
            for sql, params in statements:
                db.execute(sql, params)
            for _, sql in guards:
                db.execute(sql)
            db.execute("COMMIT")
        finally:
            db.close()
        return
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")  # superuser: triggers do not fire
        for sql, params in statements:
            conn.execute(sql.replace("?", "%s"), params)


def raw_fetch(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()
    with psycopg.connect(url) as conn:
        return conn.execute(sql.replace("?", "%s"), params).fetchall()


def raw_execute(url: str, sql: str, params: Sequence[Any] = ()) -> None:
    """Run SQL with the triggers in force (to show they refuse)."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            db.execute(sql, params)
        finally:
            db.close()
        return
    with psycopg.connect(url) as conn:
        conn.execute(sql.replace("?", "%s"), params)


def append_worker(url: str, tenants: Sequence[str], events: int, seed: int, start: Any, results: Any) -> None:
    """One concurrent appender (run in its own process): every event of every tenant, in its own shuffled order,
    in batches like the ingest worker's. Puts (new, existing) counts on `results`, or the error that stopped it."""
    import random

    order = [(tenant, n) for tenant in tenants for n in range(events)]
    random.Random(seed).shuffle(order)
    new = existing = 0
    try:
        store = open_store(url, signer=SIGNER, checkpoint_every=40)
        try:
            start.wait(30)
            for offset in range(0, len(order), 25):
                batch = [make_record(n, tenant=tenant) for tenant, n in order[offset : offset + 25]]
                result = store.append(batch, route_all)
                new += len(result.new_ids)
                existing += len(result.existing_ids)
        finally:
            store.close()
    except Exception as exc:  # reported to the test, which fails on it at once
        results.put(f"{type(exc).__name__}: {exc}")
        return
    results.put((new, existing))
