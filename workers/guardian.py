"""A worker's housekeeping thread: its liveness, recovery of dead workers' jobs, and the work scheduled for later.

Each job is its own module (workers/liveness.py, workers/recovery.py, workers/scheduling.py); this one only times
them: liveness and due retries on every beat (a quarter of the liveness TTL, 0.2 to 1 s), recovery and the drift
check every `worker.recovery_interval_seconds`.
"""

from __future__ import annotations

import contextlib
import threading

import structlog
from redis import Redis
from redis.exceptions import RedisError

from broker.queues import QUEUES
from config.settings import Settings
from workers.liveness import Liveness, forget_dead_consumers
from workers.recovery import Recovery
from workers.scheduling import RetryScheduler, schedule_drift_check

log = structlog.get_logger("keytrail.recovery")


class Guardian:
    """Runs one worker's liveness, recovery and scheduling from one daemon thread. With `queue` the worker is that
    queue's consumer and runs RQ's scheduler for it; without, it only keeps alive and recovers."""

    def __init__(self, redis: Redis, worker_name: str, settings: Settings, queue: str | None = None) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self.settings = settings
        ttl = settings.worker.liveness_ttl_seconds
        self.liveness = Liveness(redis, worker_name, ttl_seconds=ttl, queue=queue)
        self.recovery = Recovery(redis, worker_name)
        self.retries = RetryScheduler(redis, worker_name, queue) if queue else None
        self._beat = min(1.0, max(0.2, ttl / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keytrail-guardian", daemon=True)

    def start(self) -> None:
        self.liveness.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(RedisError):
            if self.retries is not None:
                self.retries.release()
            self.liveness.end()

    def sweep(self) -> int:
        """Requeue dead workers' jobs and forget them as consumers; how many jobs were requeued."""
        requeued = self.recovery.recover()
        for queue in QUEUES:
            forget_dead_consumers(self.redis, queue)
        return requeued

    def schedule(self) -> None:
        """Due retries onto the queue, if this worker runs its scheduler."""
        if self.retries is not None:
            self.retries.run_due()

    def _run(self) -> None:
        every = max(1, round(self.settings.worker.recovery_interval_seconds / self._beat))
        tick = 0
        while not self._stop.wait(self._beat):
            try:
                self.liveness.beat()
                self.schedule()
                if tick % every == 0:
                    self.sweep()
                    schedule_drift_check(self.redis, self.worker_name, self.settings)
            except RedisError as exc:
                log.warning("guardian_redis_error", error=type(exc).__name__, detail=str(exc)[:200])
            tick += 1
