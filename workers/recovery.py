"""Finds jobs a dead worker left behind and puts them back on their queue within seconds, not minutes.

RQ alone notices a SIGKILLed worker only after its job heartbeat lapses and some other worker's maintenance runs
(about 11-12 minutes with defaults; see reference §4). Here every keytrail worker keeps a short-lived liveness key
fresh (workers/liveness.py); a job in a StartedJobRegistry whose worker's key is gone is requeued at once, and a job
stranded in RQ's intermediate list (popped, never started) is requeued when two scans in a row find it there.
Requeueing can run a job twice; the jobs are idempotent, so the worst case is a duplicate delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import structlog
from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from broker.queues import QUEUES, JobSerializer, decoded, recovering_key
from workers.liveness import is_alive

log = structlog.get_logger("keytrail.recovery")


class Recovery:
    """Requeues what dead workers hold. Remembers the last scan's stranded jobs, so keep one per worker."""

    def __init__(self, redis: Redis, worker_name: str) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self._stranded: set[tuple[str, str]] = set()

    def recover(self) -> int:
        """Requeue every job of ours that a dead worker holds. Returns how many were requeued."""
        requeued = 0
        for name in QUEUES:
            queue = Queue(name, connection=self.redis, serializer=JobSerializer)
            requeued += self._recover_started(queue) + self._recover_stranded(queue)
        return requeued

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
            if not owner or owner == self.worker_name or is_alive(self.redis, owner):
                continue
            if self._requeue(queue, job, partial(self.redis.zrem, registry.key, f"{job_id}:{execution_id}")):
                log.warning("abandoned_job_requeued", queue=queue.name, job_id=job_id, dead_worker=owner)
                count += 1
        return count

    def _recover_stranded(self, queue: Queue) -> int:
        key = IntermediateQueue.get_intermediate_queue_key(queue.key)
        seen_now = {(queue.name, decoded(raw)) for raw in self.redis.lrange(key, 0, -1)}
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
        if not self.redis.set(recovering_key(job.id), self.worker_name, nx=True, ex=30):
            return False
        # Enqueue first, then forget the old entry: a crash in between leaves a duplicate run, never a lost job.
        queue.enqueue_job(job)
        remove()
        return True
