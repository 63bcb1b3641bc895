"""Finds jobs a dead worker left behind and puts them back on their queue within seconds, not minutes.

RQ alone notices a SIGKILLed worker only after its job heartbeat lapses and some other worker's maintenance runs
(about 11-12 minutes with defaults; see reference §4). Here every keytrail worker keeps a short-lived liveness key
fresh from a thread; a job in a StartedJobRegistry whose worker's key is gone is requeued at once, and a job
stranded in RQ's intermediate list (popped, never started) is requeued when two scans in a row find it there.
Requeueing can run a job twice; the jobs are idempotent, so the worst case is a duplicate delivery.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from functools import partial

import structlog
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler

from broker.queues import (
    DELIVER_QUEUE,
    DRIFT_CHECK_JOB,
    INGEST_QUEUE,
    JobSerializer,
    alive_key,
    consumers_key,
    ingest_consumers_key,
)
from config.settings import Settings

log = structlog.get_logger("keytrail.recovery")


class Guardian:
    """From one thread of the worker process: keeps its liveness key fresh, recovers dead workers' jobs, and runs
    RQ's scheduler for its queue (due retries back onto the queue).

    RQ would run the scheduler as a forked child, which outlives a SIGKILLed worker and holds the scheduler lock
    until it dies; in this thread it dies with the worker, and a lock held by a dead worker is reclaimed at once."""

    def __init__(self, redis: Redis, worker_name: str, settings: Settings, queue: str | None = None) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self.settings = settings
        self.queue = queue
        self.scheduler = (
            RQScheduler([queue], connection=redis, serializer=JobSerializer, name=worker_name) if queue else None
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keytrail-guardian", daemon=True)
        self._stranded: set[tuple[str, str]] = set()

    def heartbeat(self) -> None:
        ttl_ms = int(self.settings.worker.liveness_ttl_seconds * 1000)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(alive_key(self.worker_name), "1", px=ttl_ms)
            if self.queue is not None:
                # Which queue this worker consumes, for `/readyz` and `keytrail status` (live = alive key exists).
                pipe.sadd(consumers_key(self.queue), self.worker_name)
            if self.queue == INGEST_QUEUE:
                pipe.set(ingest_consumers_key(), self.worker_name, px=ttl_ms)
            pipe.execute()

    def start(self) -> None:
        self.heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(RedisError):
            if self.scheduler is not None:
                self.scheduler.release_locks()  # type: ignore[no-untyped-call]
            self.redis.delete(alive_key(self.worker_name))
            if self.queue is not None:
                self.redis.srem(consumers_key(self.queue), self.worker_name)

    def schedule(self) -> None:
        """Move due scheduled jobs (retries) onto the queue, if this worker holds the queue's scheduler lock."""
        if self.scheduler is None or self.queue is None:
            return
        if self.scheduler.acquired_locks:
            self.scheduler.heartbeat()  # type: ignore[no-untyped-call]
        else:
            lock = self.scheduler.get_locking_key(self.queue)
            holder = self.redis.get(lock)
            if holder is not None and not self.redis.exists(alive_key(_text(holder))):
                self.redis.delete(lock)  # its owner is dead; SET NX below lets exactly one live worker take it
            self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if self.scheduler.acquired_locks:
            self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        beat = min(1.0, max(0.2, self.settings.worker.liveness_ttl_seconds / 4))
        every = max(1, round(self.settings.worker.recovery_interval_seconds / beat))
        tick = 0
        while not self._stop.wait(beat):
            try:
                self.heartbeat()
                self.schedule()
                if tick % every == 0:
                    self.recover()
                    self.schedule_drift_check()
            except RedisError as exc:
                log.warning("guardian_redis_error", error=type(exc).__name__, detail=str(exc)[:200])
            tick += 1

    def recover(self) -> int:
        """Requeue every job of ours that a dead worker holds. Returns how many were requeued."""
        requeued = 0
        for name in (INGEST_QUEUE, DELIVER_QUEUE):
            queue = Queue(name, connection=self.redis, serializer=JobSerializer)
            requeued += self._recover_started(queue) + self._recover_stranded(queue)
            self._forget_dead_consumers(name)
        return requeued

    def _forget_dead_consumers(self, queue: str) -> None:
        """Drop dead workers from the queue's consumer set, so it does not grow with every restart."""
        members = [_text(name) for name in self.redis.smembers(consumers_key(queue))]
        with self.redis.pipeline(transaction=False) as pipe:
            for name in members:
                pipe.exists(alive_key(name))
            alive = pipe.execute()
        dead = [name for name, exists in zip(members, alive, strict=True) if not exists]
        if dead:
            self.redis.srem(consumers_key(queue), *dead)

    def _recover_started(self, queue: Queue) -> int:
        registry = StartedJobRegistry(queue.name, connection=self.redis, serializer=JobSerializer)
        count = 0
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            try:
                job = Job.fetch(job_id, connection=self.redis, serializer=JobSerializer)
            except NoSuchJobError:
                self.redis.zrem(registry.key, f"{job_id}:{execution_id}")
                continue
            owner = job.worker_name
            if not owner or owner == self.worker_name or self.redis.exists(alive_key(owner)):
                continue
            if self._requeue(queue, job, partial(self.redis.zrem, registry.key, f"{job_id}:{execution_id}")):
                log.warning("abandoned_job_requeued", queue=queue.name, job_id=job_id, dead_worker=owner)
                count += 1
        return count

    def _recover_stranded(self, queue: Queue) -> int:
        key = IntermediateQueue.get_intermediate_queue_key(queue.key)
        seen_now = {(queue.name, _text(raw)) for raw in self.redis.lrange(key, 0, -1)}
        count = 0
        for _, job_id in seen_now & self._stranded:
            try:
                job = Job.fetch(job_id, connection=self.redis, serializer=JobSerializer)
            except NoSuchJobError:
                self.redis.lrem(key, 0, job_id)
                continue
            if job.get_status() not in (JobStatus.QUEUED, None):
                continue  # started (the registry scan owns it) or finished
            if self._requeue(queue, job, partial(self.redis.lrem, key, 0, job_id)):
                log.warning("stranded_job_requeued", queue=queue.name, job_id=job_id)
                count += 1
        self._stranded = {item for item in seen_now if item[0] == queue.name} | {
            item for item in self._stranded if item[0] != queue.name
        }
        return count

    def _requeue(self, queue: Queue, job: Job, remove: Callable[[], object]) -> bool:
        # One recoverer per job even when several workers scan at once.
        if not self.redis.set(f"keytrail:recovering:{job.id}", self.worker_name, nx=True, ex=30):
            return False
        # Enqueue first, then forget the old entry: a crash in between leaves a duplicate run, never a lost job.
        queue.enqueue_job(job)
        remove()
        return True

    def schedule_drift_check(self) -> None:
        """Enqueue the subscription drift check once per interval across all workers (a Redis lock elects one)."""
        interval = self.settings.authapi.drift_check_interval_seconds
        wanted = interval > 0 and any(t.access_key and t.public_url for t in self.settings.tenants.values())
        if wanted and self.redis.set("keytrail:drift-check:scheduled", self.worker_name, nx=True, ex=interval):
            Queue(DELIVER_QUEUE, connection=self.redis, serializer=JobSerializer).enqueue(
                DRIFT_CHECK_JOB, result_ttl=0, failure_ttl=86400, description="check subscriptions for drift"
            )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
