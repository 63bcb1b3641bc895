"""What `/readyz` checks besides Redis and the high-water mark: every queue that has work has a live worker."""

from __future__ import annotations

from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from rq.registry import ScheduledJobRegistry

from broker.queues import QUEUES, alive_key, consumers_key


async def unserved_queues(redis: AsyncRedis) -> dict[str, int]:
    """Queues with jobs waiting (queued, or scheduled for a retry) and no live consumer: queue -> jobs waiting.

    Live means the worker's liveness key exists (workers/liveness.py refreshes it every second or so); RQ's own
    worker registry is not used, because it keeps a killed worker for minutes."""
    async with redis.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(Queue.redis_queue_namespace_prefix + queue)
            pipe.zcard(ScheduledJobRegistry.key_template.format(queue))
            pipe.smembers(consumers_key(queue))
        replies = await pipe.execute()
    waiting: dict[str, int] = {}
    members: dict[str, list[bytes]] = {}
    for index, queue in enumerate(QUEUES):
        queued, scheduled, names = replies[index * 3 : index * 3 + 3]
        if queued + scheduled:
            waiting[queue], members[queue] = queued + scheduled, sorted(names)
    if not waiting:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for queue in waiting:
            for name in members[queue]:
                pipe.exists(alive_key(name.decode()))
        alive = iter(await pipe.execute())
    live = {queue: sum(bool(next(alive)) for _ in members[queue]) for queue in waiting}  # in the order asked
    return {queue: jobs for queue, jobs in waiting.items() if not live[queue]}
