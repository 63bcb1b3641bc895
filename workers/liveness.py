"""Tells everyone which workers are alive and what they consume: a short-lived key per worker, kept fresh.

A worker's `alive_key` lapses within `worker.liveness_ttl_seconds` of its death, SIGKILL included, which is how
recovery knows whose jobs to take back, how the scheduler lock is reclaimed, and how `/readyz` and
`keytrail status` count live consumers per queue (the members of `consumers_key(queue)` whose key exists).
"""

from __future__ import annotations

from redis import Redis

from broker.queues import INGEST_QUEUE, alive_key, consumers_key, decoded, ingest_consumers_key


def is_alive(redis: Redis, worker_name: bytes | str) -> bool:
    return bool(redis.exists(alive_key(decoded(worker_name))))


class Liveness:
    """One worker's liveness key and, when it consumes `queue`, its place in that queue's consumer set."""

    def __init__(self, redis: Redis, worker_name: str, *, ttl_seconds: float, queue: str | None = None) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self.queue = queue
        self._ttl_ms = int(ttl_seconds * 1000)

    def beat(self) -> None:
        """Refresh the liveness key (and register as the queue's consumer) for another TTL."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(alive_key(self.worker_name), "1", px=self._ttl_ms)
            if self.queue is not None:
                # Which queue this worker consumes, for `/readyz` and `keytrail status` (live = alive key exists).
                pipe.sadd(consumers_key(self.queue), self.worker_name)
            if self.queue == INGEST_QUEUE:
                pipe.set(ingest_consumers_key(), self.worker_name, px=self._ttl_ms)
            pipe.execute()

    def end(self) -> None:
        """A clean stop: dead at once, instead of after the TTL."""
        self.redis.delete(alive_key(self.worker_name))
        if self.queue is not None:
            self.redis.srem(consumers_key(self.queue), self.worker_name)


def forget_dead_consumers(redis: Redis, queue: str) -> None:
    """Drop dead workers from the queue's consumer set, so it does not grow with every restart."""
    members = [decoded(name) for name in redis.smembers(consumers_key(queue))]
    with redis.pipeline(transaction=False) as pipe:
        for name in members:
            pipe.exists(alive_key(name))
        alive = pipe.execute()
    dead = [name for name, exists in zip(members, alive, strict=True) if not exists]
    if dead:
        redis.srem(consumers_key(queue), *dead)
