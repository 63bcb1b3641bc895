"""Worker throughput: N preloaded events drained by one worker process per stage into a counting HEC peer.

Stage 1 (`keytrail worker --queue ingest --burst`): normalize + append to the audit store + enqueue deliveries.
Stage 2 (`keytrail worker --queue deliver --burst`): read records, render, gzip, POST to HEC, record outcomes.
Baseline, in the same run: the same RQ worker draining the same number of no-op jobs of the same batch size, so
the ratio says what keytrail's work costs on top of RQ's own per-job overhead on this machine.

    .venv/bin/python bench/worker.py [--events 50000] [--batch 256] [--redis-url redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from redis import Redis
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes.hec import FakeHec

from broker.queues import INGEST_QUEUE, NORMALIZE_JOB, JobSerializer
from events.redaction import Redactor

REDIS_URL = "redis://127.0.0.1:6379/12"
HEC_TOKEN = "bench-hec-token"


def events(count: int, redactor: Redactor) -> list[dict[str, str]]:
    made = []
    for index in range(count):
        body = {
            "id": str(uuid.uuid4()),
            "topic": ("api-key.created", "api-key.updated", "api-key.deleted", "project.updated")[index % 4],
            "createdAt": "2026-11-28T10:00:00.000Z",
            "projectId": "p-1",
            "accountId": "a-1",
            "data": {
                "key": f"live_benchkeybenchkey{index:012d}",
                "name": f"key {index}",
                "env": "live",
                "projectId": "p-1",
                "createdBy": "u-1",
                "createdByType": "USER",
            },
        }
        raw = json.dumps(body).encode()
        made.append(
            {
                "tenant": "bench",
                "event_key": body["id"],
                "topic": body["topic"],
                "received_at": "2026-11-28T10:00:00.001Z",
                "raw_sha256": hashlib.sha256(raw).hexdigest(),
                "body": json.dumps(redactor.redact(body)),
            }
        )
    return made


def preload(redis: Redis, func: str, batches: list[list[dict[str, str]]]) -> None:
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JobSerializer)
    jobs = [Queue.prepare_data(func, args=(batch,), result_ttl=0, timeout=600) for batch in batches]
    for start in range(0, len(jobs), 200):
        with redis.pipeline() as pipe:
            queue.enqueue_many(jobs[start : start + 200], pipeline=pipe)
            pipe.execute()


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a Redis database the bench may flush")
    args = parser.parse_args()
    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    work = Path(tempfile.mkdtemp(prefix="keytrail-bench-"))
    with FakeHec(tokens=[HEC_TOKEN], counting=True) as hec:
        config = work / "keytrail.toml"
        config.write_text(
            f'data_dir = "{work / "data"}"\nlog_level = "warning"\n[redis]\nurl = "{args.redis_url}"\n'
            f'[audit]\nurl = "sqlite:///{work / "data" / "audit.db"}"\n[tenants.bench]\ntoken = "t"\n'
            f'[[sinks]]\nname = "splunk"\ntype = "splunk_hec"\nurl = "{hec.url}"\ntoken = "{HEC_TOKEN}"\n'
            "max_events = 500\n"
        )
        base = [sys.executable, "-m", "keytrail", "--config", str(config), "worker", "--burst", "--queue"]
        (work / "data").mkdir(parents=True)
        pepper = b"bench-pepper"
        (work / "data" / "pepper").write_bytes(pepper)
        made = events(args.events, Redactor(pepper))
        batches = [made[i : i + args.batch] for i in range(0, len(made), args.batch)]

        startup = timed([*base, "ingest"])  # an empty queue: what starting a worker process costs
        preload(redis, "builtins.len", batches)
        baseline = timed([*base, "ingest"]) - startup
        redis.flushdb()

        preload(redis, NORMALIZE_JOB, batches)
        normalize = timed([*base, "ingest"]) - startup
        deliver = timed([*base, "deliver"]) - startup
        staged = hec.event_count

        # Both stages at once, as deployed: one process per queue, side by side on the machine's two cores.
        redis.flushdb()
        made = events(args.events, Redactor(pepper))
        preload(redis, NORMALIZE_JOB, [made[i : i + args.batch] for i in range(0, len(made), args.batch)])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        ingest = subprocess.Popen([*base, "ingest"], cwd=ROOT, env=env)
        deliverer = subprocess.Popen([*base[:-2], "--queue", "deliver"], cwd=ROOT, env=env)
        deadline = started + 600
        while hec.event_count < 2 * args.events and time.perf_counter() < deadline:
            time.sleep(0.01)
        together = time.perf_counter() - started - startup
        deliverer.terminate()
        deliverer.wait(timeout=30)
        ingest.wait(timeout=30)
        delivered = hec.event_count - staged
    redis.flushdb()
    n = args.events
    print(f"events                    : {n} in batches of {args.batch} (worker start-up of {startup:.2f}s excluded)")
    print(f"baseline (no-op jobs)     : {n / baseline:9.0f} events/s  (RQ SimpleWorker, same jobs, no work)")
    print(f"stage 1 normalize + store : {n / normalize:9.0f} events/s  (one process)")
    print(f"stage 2 deliver to HEC    : {n / deliver:9.0f} events/s  (one process)")
    print(f"both stages side by side  : {n / together:9.0f} events/s  queue -> HEC (target >= 5000)")
    print(f"ratio to no-op baseline   : {baseline / together:9.2f}")
    print(f"HEC received              : {staged} + {delivered} of {n} + {n}")
    return 0 if staged == n and delivered == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
