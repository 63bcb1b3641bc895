"""Audit store benchmark: filtered-search latency, export rate and append rate as the table grows, on both backends.

    .venv/bin/python bench/audit_store.py                      # 1,000,000 records, SQLite and PostgreSQL
    .venv/bin/python bench/audit_store.py --records 200000 --backend sqlite

Targets (issue 5): with N records stored, one key's history and one tenant's last 24 h answer in <= 50 ms p95;
export streams >= 50,000 records/s; append throughput at N rows is not below what it is at 10k rows. Figures are
printed with their ratio to the target; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit.chain import HmacSigner, verify
from audit.stores import AuditStore, RecordQuery, open_store
from config.logging import configure_logging
from events.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity
from events.times import format_utc as iso
from workers.normalize import record_id

TENANTS = 20
EVENTS_PER_KEY = 5
DAYS = 90
BATCH = 500  # records per append: what one ingest batch of a busy receiver holds
PROBE = 10_000  # records appended to measure the append rate at a table size
TOPICS = ("api-key.created", "api-key.firstUsed", "api-key.updated", "api-key.updated", "api-key.deleted")
ACTIVITIES = (Activity.CREATE, Activity.OTHER, Activity.UPDATE, Activity.UPDATE, Activity.DELETE)
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_DATABASE = "keytrail_bench"


@dataclass(frozen=True)
class Corpus:
    """N synthetic records: TENANTS tenants, one key per EVENTS_PER_KEY records, spread over DAYS days up to now."""

    size: int
    now: datetime

    def key(self, n: int) -> str:
        # Fingerprints are hashes in service: B-tree inserts land anywhere, not at the end.
        return "fp_" + hashlib.sha256(str(n // EVENTS_PER_KEY).encode()).hexdigest()[:32]

    def record(self, n: int) -> AuditRecord:
        key_no = n // EVENTS_PER_KEY
        step = n % EVENTS_PER_KEY
        tenant = f"tenant-{key_no % TENANTS:02d}"
        stored = self.now - timedelta(seconds=DAYS * 86400 * (1 - n / self.size))
        # Deliveries arrive out of order: event time is up to a minute before the time it was stored.
        event_time = stored - timedelta(milliseconds=(n * 7919) % 60_000)
        return AuditRecord(
            record_id=record_id(tenant, f"evt-{n}", iso(stored)),
            event_id=f"evt-{n}",
            tenant=tenant,
            topic=TOPICS[step],
            time=iso(event_time),
            received_at=iso(stored),
            activity_id=ACTIVITIES[step],
            severity_id=Severity.INFORMATIONAL,
            entity=Entity(
                type=EntityType.API_KEY,
                uid=self.key(n),
                name=f"service key {key_no}",
                fingerprint=self.key(n),
                prefix="live_",
                last4=f"{key_no % 10000:04d}",
            ),
            project_id=f"proj-{key_no % 200:03d}",
            account_id=f"acct-{key_no % TENANTS:02d}",
            actor=Actor(uid=f"user-{key_no % 500}", type="user"),
            metadata={"product": "The Auth API", "keytrail_version": "bench"},
            raw_sha256=f"{n:064x}",
            raw_redacted={"type": TOPICS[step], "data": {"name": f"service key {key_no}", "projectId": "p"}},
        )

    def batches(self, start: int, stop: int) -> Iterator[list[AuditRecord]]:
        for first in range(start, stop, BATCH):
            yield [self.record(n) for n in range(first, min(stop, first + BATCH))]


def route(record: AuditRecord) -> list[str]:
    return ["archive"]


def append_range(store: AuditStore, corpus: Corpus, start: int, stop: int, *, progress: bool = False) -> float:
    """Append records [start, stop); returns records per second."""
    began = time.perf_counter()
    done = start
    for batch in corpus.batches(start, stop):
        store.append(batch, route)
        done += len(batch)
        if progress and done % 100_000 < BATCH:
            print(f"    loaded {done:,} / {corpus.size:,}", file=sys.stderr, flush=True)
    return (stop - start) / (time.perf_counter() - began)


def latencies(run: Callable[[int], int], rounds: int) -> tuple[float, float, float]:
    """(p50, p95, mean rows) in ms over `rounds` calls of run(i) -> rows returned."""
    times, rows = [], []
    for i in range(rounds):
        began = time.perf_counter()
        rows.append(run(i))
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], statistics.mean(rows)


def export_rate(store: AuditStore, query: RecordQuery, fmt: str) -> tuple[float, int]:
    """Records/s streaming `query` into /dev/null the way `keytrail audit export` writes them."""
    import csv

    from keytrail.record_output import CSV_COLUMNS, csv_row

    count = 0
    began = time.perf_counter()
    with open(os.devnull, "w", encoding="utf-8", newline="") as sink:
        if fmt == "jsonl":
            for stored in store.stream(query):
                sink.write(stored.body + "\n")
                count += 1
        else:
            writer = csv.DictWriter(sink, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for stored in store.stream(query):
                writer.writerow(csv_row(stored.data()))
                count += 1
    return count / (time.perf_counter() - began), count


@contextlib.contextmanager
def fresh_store(backend: str, pg_url: str | None, signer: HmacSigner) -> Iterator[tuple[AuditStore, str]]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="keytrail-bench-") as directory:
            url = f"sqlite:///{directory}/audit.db"
            store = open_store(url, signer=signer)
            try:
                yield store, url
            finally:
                store.close()
        return
    import psycopg

    server = pg_url or f"{PG_SERVER}/{PG_DATABASE}"
    if pg_url is None:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone():
                admin.execute(f"CREATE DATABASE {PG_DATABASE}")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in server else "?"
    url = f"{server}{separator}options={quote(f'-csearch_path={schema}')}"
    store = open_store(url, signer=signer)
    try:
        yield store, url
    finally:
        store.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def analyze(backend: str, url: str) -> None:
    """PostgreSQL: fresh statistics, as autovacuum keeps them in service. SQLite: nothing, as in service (the store
    never runs ANALYZE, so the planner's defaults are what users get)."""
    if backend != "postgres":
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def run(backend: str, size: int, rounds: int, pg_url: str | None) -> dict[str, float]:
    corpus = Corpus(size, datetime.now(UTC))
    signer = HmacSigner(b"bench checkpoint key")
    figures: dict[str, float] = {}
    print(f"\n== {backend}: {size:,} records, {TENANTS} tenants, {size // EVENTS_PER_KEY:,} keys ==", flush=True)
    with fresh_store(backend, pg_url, signer) as (store, url):
        # Append rate measured over PROBE records at three table sizes: ~10k, ~N/10 and ~N rows.
        probe = min(PROBE, size // 10)
        marks = sorted({probe, max(2 * probe, size // 10), size - probe})
        rates: dict[int, float] = {}
        loaded, load_time = 0, 0.0
        for mark in marks:
            began = time.perf_counter()
            append_range(store, corpus, loaded, mark, progress=True)
            load_time += time.perf_counter() - began
            rates[mark] = append_range(store, corpus, mark, mark + probe)
            loaded = mark + probe
        figures["append_at_10k"], figures["append_at_n"] = rates[marks[0]], rates[marks[-1]]
        curve = ", ".join(f"{rate:,.0f} at ~{mark:,}" for mark, rate in rates.items())
        print(
            f"  append (rec/s at rows stored): {curve} "
            f"(N/10k ratio {figures['append_at_n'] / figures['append_at_10k']:.2f}; "
            f"bulk load {(loaded - len(marks) * probe) / max(load_time, 1e-9):,.0f} rec/s)"
        )
        analyze(backend, url)

        pick = random.Random(7)
        keys = [corpus.key(pick.randrange(size)) for _ in range(rounds)]
        tenants = [f"tenant-{pick.randrange(TENANTS):02d}" for _ in range(rounds)]
        since = iso(corpus.now - timedelta(hours=24))
        history = latencies(
            lambda i: len(store.search(RecordQuery(fingerprint=keys[i], event_time_order=True, limit=100))), rounds
        )
        last_day = latencies(
            lambda i: len(store.search(RecordQuery(tenant=tenants[i], since=since, limit=100))), rounds
        )
        week_since = iso(corpus.now - timedelta(days=7))
        last_week = latencies(
            lambda i: len(store.search(RecordQuery(tenant=tenants[i], since=week_since, limit=100))), rounds
        )
        day_count = store.count(RecordQuery(tenant=tenants[0], since=since))
        week_count = store.count(RecordQuery(tenant=tenants[0], since=week_since))
        figures["history_p95_ms"], figures["last24h_p95_ms"] = history[1], last_day[1]
        print(
            f"  one key's history:        p50 {history[0]:6.2f} ms  p95 {history[1]:6.2f} ms  "
            f"({history[2]:.1f} records; target 50 ms: {history[1] / 50:.2f}x)"
        )
        print(
            f"  one tenant's last 24 h:   p50 {last_day[0]:6.2f} ms  p95 {last_day[1]:6.2f} ms  "
            f"(first page of 100 of ~{day_count:,}; target 50 ms: {last_day[1] / 50:.2f}x)"
        )

        print(
            f"  one tenant's last 7 days: p50 {last_week[0]:6.2f} ms  p95 {last_week[1]:6.2f} ms  "
            f"(first page of 100 of ~{week_count:,})"
        )

        figures["export_jsonl"], exported = export_rate(store, RecordQuery(oldest_first=True), "jsonl")
        print(
            f"  export jsonl, everything: {figures['export_jsonl']:,.0f} rec/s over {exported:,} records "
            f"(target 50,000: {figures['export_jsonl'] / 50_000:.2f}x)"
        )
        figures["export_csv"], exported = export_rate(store, RecordQuery(tenant="tenant-03", oldest_first=True), "csv")
        print(
            f"  export csv, one tenant:   {figures['export_csv']:,.0f} rec/s over {exported:,} records "
            f"(target 50,000: {figures['export_csv'] / 50_000:.2f}x)"
        )

        began = time.perf_counter()
        report = verify(store, signer, tenant="tenant-05")
        checked = report.tenants[0].records
        print(
            f"  verify one tenant:        {checked / (time.perf_counter() - began):,.0f} rec/s over {checked:,} "
            f"records, {report.tenants[0].checkpoints} checkpoints, ok={report.ok}"
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000, help="records stored (default 1,000,000)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=300, help="queries timed per kind (default 300)")
    parser.add_argument("--pg-url", help=f"a PostgreSQL database (default {PG_SERVER}/{PG_DATABASE}, created)")
    args = parser.parse_args()
    configure_logging("warning")  # a checkpoint_written line per tenant per 1,000 records would drown the figures
    if args.records < 4 * BATCH:
        parser.error(f"--records must be at least {4 * BATCH}")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {backend: run(backend, args.records, args.rounds, args.pg_url) for backend in backends}
    if len(results) == 2:
        sqlite, postgres = results["sqlite"], results["postgres"]
        print("\n== postgres / sqlite ==")
        for name in ("append_at_n", "history_p95_ms", "last24h_p95_ms", "export_jsonl"):
            print(f"  {name:16} {postgres[name] / sqlite[name]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
