"""Work that is due later: RQ's scheduler for a worker's queue (retries back on time) and the drift check.

RQ would run its scheduler as a forked child, which outlives a SIGKILLed worker and holds the scheduler lock until
it dies; run from the worker's guardian thread (workers/guardian.py) it dies with the worker, and a lock held by a
dead worker is reclaimed at once.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.scheduler import RQScheduler

from broker.queues import DELIVER_QUEUE, DRIFT_CHECK_JOB, JobSerializer, drift_check_key
from config.settings import Settings
from workers.liveness import is_alive


class RetryScheduler:
    """Moves a queue's due scheduled jobs (retries) onto it, from whichever live worker holds the queue's lock."""

    def __init__(self, redis: Redis, worker_name: str, queue: str) -> None:
        self.redis = redis
        self.queue = queue
        self.scheduler = RQScheduler([queue], connection=redis, serializer=JobSerializer, name=worker_name)

    def run_due(self) -> None:
        """Enqueue the due jobs, if this worker holds the queue's scheduler lock (taken over from a dead holder)."""
        if self.scheduler.acquired_locks:
            self.scheduler.heartbeat()  # type: ignore[no-untyped-call]
        else:
            lock = self.scheduler.get_locking_key(self.queue)
            holder = self.redis.get(lock)
            if holder is not None and not is_alive(self.redis, holder):
                self.redis.delete(lock)  # its owner is dead; SET NX below lets exactly one live worker take it
            self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if self.scheduler.acquired_locks:
            self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def release(self) -> None:
        self.scheduler.release_locks()  # type: ignore[no-untyped-call]


def schedule_drift_check(redis: Redis, worker_name: str, settings: Settings) -> None:
    """Enqueue the subscription drift check once per interval across all workers (a Redis lock elects one)."""
    interval = settings.authapi.drift_check_interval_seconds
    wanted = interval > 0 and any(t.access_key and t.public_url for t in settings.tenants.values())
    if wanted and redis.set(drift_check_key(), worker_name, nx=True, ex=interval):
        Queue(DELIVER_QUEUE, connection=redis, serializer=JobSerializer).enqueue(
            DRIFT_CHECK_JOB, result_ttl=0, failure_ttl=86400, description="check subscriptions for drift"
        )
