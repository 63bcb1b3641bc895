"""Duplicates at HEC with two worker supervisors on one Redis and PostgreSQL, no faults (issue 8, item 12).

Preloads N normalize jobs (what the receiver enqueues), starts two `keytrail worker` supervisors (each runs an
ingest and a deliver child), waits until the counting HEC peer has every record and stays quiet, and prints how
many events HEC indexed beyond one per record. Target: 0.

    .venv/bin/python bench/duplicates.py [--events 3000] [--redis-url redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from fakes.hec import FakeHec
from worker import HEC_TOKEN, REDIS_URL, events, preload

from broker.queues import NORMALIZE_JOB
from events.redaction import Redactor

PG_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/keytrail_test"
QUIET_SECONDS = 3.0  # no new HEC event for this long after the last record arrived: the run is over


def wait_for_quiet(hec: FakeHec, expected: int, deadline: float) -> None:
    """Until HEC holds every record and has indexed nothing new for QUIET_SECONDS (duplicates arrive late too)."""
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = hec.event_count
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif len(hec.event_ids) >= expected and time.monotonic() - last_change >= QUIET_SECONDS:
            return
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--supervisors", type=int, default=2)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a Redis database the bench may flush")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    audit_url = f"{PG_DATABASE_URL}?options={quote(f'-csearch_path={schema}')}"
    work = Path(tempfile.mkdtemp(prefix="keytrail-dups-"))
    (work / "data").mkdir()
    pepper = b"bench-pepper"
    (work / "data" / "pepper").write_bytes(pepper)
    supervisors: list[subprocess.Popen[bytes]] = []
    try:
        with FakeHec(tokens=[HEC_TOKEN], counting=True) as hec:
            config = work / "keytrail.toml"
            config.write_text(
                f'data_dir = "{work / "data"}"\nlog_level = "warning"\n[redis]\nurl = "{args.redis_url}"\n'
                f'[audit]\nurl = "{audit_url}"\n[tenants.bench]\ntoken = "t"\n'
                f'[[sinks]]\nname = "splunk"\ntype = "splunk_hec"\nurl = "{hec.url}"\ntoken = "{HEC_TOKEN}"\n'
                "max_events = 500\n"
            )
            made = events(args.events, Redactor(pepper))
            preload(redis, NORMALIZE_JOB, [made[i : i + args.batch] for i in range(0, len(made), args.batch)])
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            command = [sys.executable, "-m", "keytrail", "--config", str(config), "worker"]
            started = time.monotonic()
            supervisors = [subprocess.Popen(command, cwd=ROOT, env=env) for _ in range(args.supervisors)]
            wait_for_quiet(hec, args.events, started + args.timeout)
            received, distinct = hec.event_count, len(hec.event_ids)
    finally:
        for supervisor in supervisors:
            supervisor.send_signal(signal.SIGTERM)
        for supervisor in supervisors:
            supervisor.wait(timeout=60)
        redis.flushdb()
        with psycopg.connect(PG_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    duplicates = received - distinct
    print(f"records                   : {args.events} ({args.supervisors} worker supervisors, PostgreSQL, no faults)")
    print(f"HEC received              : {received} events, {distinct} distinct")
    print(f"duplicates                : {duplicates} ({100 * duplicates / max(1, distinct):.1f}%)")
    return 0 if distinct == args.events and duplicates == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
