"""Group commit: verified events from concurrent requests go to Redis together, as one RQ job per batch.

Why: an RQ job per request caps the receiver at ~6% of a bare handler's throughput on this hardware, and a worker
drains a few hundred jobs a second. So requests wait a few milliseconds (or until `batch_max_events` arrive),
the batch is written in one atomic call of a Lua script (broker/enqueue.py), and every request is answered only
after Redis acknowledged it. The write goes out on the event loop (redis.asyncio), not a thread: a thread would have
to win the GIL from the busy request loop for every step of the write, which tripled its latency under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from rq import Queue, Retry

from broker.enqueue import RUN_COMMANDS, UnknownCommandForm, enqueue_atomically, script_args
from broker.queues import (
    INGEST_QUEUE,
    JOB_RETRY_INTERVALS,
    JOB_RETRY_MAX,
    NORMALIZE_JOB,
    JobSerializer,
    ingest_consumers_key,
)
from config.settings import IngestSettings, WorkerSettings

log = structlog.get_logger("keytrail.ingest")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower, and this is per request
class AcceptedEvent:
    """One verified event as it travels in a normalize job: JSON-safe, secrets already redacted."""

    tenant: str
    event_key: str
    topic: str | None
    received_at: str
    # HMAC-SHA256 of the raw body keyed by the pepper (Redactor.body_digest); the name is the record contract's.
    raw_sha256: str
    body: str

    def as_job_arg(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies, and this runs for every event on the receiver's hot path.
        return {
            "tenant": self.tenant,
            "event_key": self.event_key,
            "topic": self.topic,
            "received_at": self.received_at,
            "raw_sha256": self.raw_sha256,
            "body": self.body,
        }


class CommitFailed(Exception):
    """Redis did not acknowledge the batch; the request must not be answered 2xx."""


class GroupCommitter:
    """Leader-style group commit, as databases do it: a write starts as soon as a writer slot is free, and
    whatever arrives while writes are in flight goes out together in the next one. Under light load a batch
    is one event and waits for nothing; under heavy load batches grow by themselves, up to `batch_max_events`.

    The receiver can write batches faster than RQ runs jobs (~20 round trips each). So while ingest workers are
    alive and the queue is not empty (they are behind), each write lingers `batch_max_wait_ms` to collect a bigger
    batch: fewer, larger jobs let the workers catch up, and the linger ends when they have. With no live worker
    (an outage) lingering would only slow the receiver down, so it does not."""

    def __init__(
        self,
        redis: AsyncRedis,
        ingest: IngestSettings,
        worker: WorkerSettings,
        *,
        sync_redis: Redis,
        max_inflight: int = 2,
        on_commit: Any = None,
    ) -> None:
        self._redis = redis
        self._run_commands = redis.register_script(RUN_COMMANDS)
        # RQ builds the job (it reads the server version once through this client); the bytes go out on `redis`.
        self._queue = Queue(INGEST_QUEUE, connection=sync_redis, serializer=JobSerializer)
        self._sync_redis = sync_redis
        self._max_events = max(1, ingest.batch_max_events)
        self._linger = ingest.batch_max_wait_ms / 1000
        self._job_timeout = worker.job_timeout_seconds
        self._pending: list[tuple[AcceptedEvent, asyncio.Future[None]]] = []
        self._max_inflight = max(1, max_inflight)
        self._inflight = 0
        self._flushes: set[asyncio.Task[None]] = set()
        self._on_commit = on_commit
        self._closed = False
        self.queue_depth = 0
        self.queue_depth_at = 0.0
        self.consumers_alive = False
        self.consumers_at = 0.0

    async def start(self) -> None:
        self._closed = False
        # Redis down at start is not fatal: the first write fails and says so (503), and /readyz reports it.
        with contextlib.suppress(RedisError):
            await asyncio.to_thread(self._queue.get_redis_server_version)

    async def stop(self) -> None:
        """Write what is pending, wait for in-flight writes, then stop."""
        self._closed = True
        while self._pending or self._flushes:
            if self._pending and self._inflight < self._max_inflight:
                self._start_flush()
            if self._flushes:
                await asyncio.wait(set(self._flushes), return_when=asyncio.FIRST_COMPLETED)

    async def submit(self, event: AcceptedEvent) -> None:
        """Returns once the event is in Redis; raises CommitFailed when it is not."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        if self._inflight < self._max_inflight:
            self._start_flush()
        await future

    def _start_flush(self) -> None:
        self._inflight += 1
        task = asyncio.create_task(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        try:
            if self._linger > 0 and self.queue_depth > 0 and self.consumers_alive:
                await asyncio.sleep(self._linger)
            else:
                await asyncio.sleep(0)  # let requests already parsed in this loop iteration join the batch
            while self._pending:
                batch, self._pending = self._pending[: self._max_events], self._pending[self._max_events :]
                await self._write_batch(batch)
        finally:
            self._inflight -= 1

    async def _write_batch(self, batch: list[tuple[AcceptedEvent, asyncio.Future[None]]]) -> None:
        started = time.perf_counter()
        try:
            depth = await self._write([event for event, _ in batch])
        except RedisError as exc:
            log.error("batch_commit_failed", events=len(batch), error=type(exc).__name__)
            for _, future in batch:
                if not future.done():
                    future.set_exception(CommitFailed(type(exc).__name__))
            return
        self.queue_depth, self.queue_depth_at = depth, time.monotonic()
        if self._on_commit is not None:
            self._on_commit(len(batch), time.perf_counter() - started, depth)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _write(self, events: Sequence[AcceptedEvent]) -> int:
        """One script call: the job and its queue entry land together or not at all. Returns the queue length."""
        job = Queue.prepare_data(
            NORMALIZE_JOB,
            args=([event.as_job_arg() for event in events],),
            timeout=self._job_timeout,
            result_ttl=0,
            failure_ttl=30 * 86400,
            description=f"normalize {len(events)} events",
            retry=Retry(max=JOB_RETRY_MAX, interval=list(JOB_RETRY_INTERVALS)),
        )
        try:
            argv = script_args(self._queue, [job])
        except UnknownCommandForm:
            return await asyncio.to_thread(enqueue_atomically, self._sync_redis, self._queue, [job])
        return int(await self._run_commands(keys=[self._queue.key], args=argv))

    async def refresh_depth(self) -> int:
        """Read the queue length now (for /readyz and when no batch was written lately)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.llen(self._queue.key)
            pipe.exists(ingest_consumers_key())
            depth, consumers = await pipe.execute()
        self.queue_depth, self.queue_depth_at = int(depth), time.monotonic()
        self.consumers_alive, self.consumers_at = bool(consumers), self.queue_depth_at
        return self.queue_depth

    def stale(self, max_age: float = 1.0) -> bool:
        """Whether the depth or the consumers flag is older than `max_age` seconds (batches refresh the depth for
        free). A plain method, not a coroutine: the receiver asks on every delivery and is usually told no."""
        return time.monotonic() - min(self.queue_depth_at, self.consumers_at) > max_age
