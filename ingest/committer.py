"""Group commit: verified events from concurrent requests go to Redis together, as one RQ job per batch.

Why: an RQ job per request caps the receiver at ~6% of a bare handler's throughput on this hardware, and a worker
drains a few hundred jobs a second. So requests wait a few milliseconds (or until `batch_max_events` arrive),
the batch is written in one MULTI/EXEC pipeline, and every request is answered only after Redis acknowledged it.
The write goes out on the event loop (redis.asyncio), not a thread: a thread would have to win the GIL from the
busy request loop for every step of the write, which tripled its latency under load.
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
from rq import Queue
from rq.serializers import JSONSerializer

from config.queues import INGEST_QUEUE, NORMALIZE_JOB
from config.settings import IngestSettings, WorkerSettings

log = structlog.get_logger("keytrail.ingest")


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """One verified event as it travels in a normalize job: JSON-safe, secrets already redacted."""

    tenant: str
    event_key: str
    topic: str | None
    received_at: str
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


class _RecordedPipeline:
    """Stands in for a Redis pipeline so RQ's own `enqueue_many` records the commands for a job, which are then
    sent on the asyncio client. RQ stays the authority on how a job is stored; keytrail only carries the bytes."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> _RecordedPipeline:
            self.commands.append((name, args, kwargs))
            return self

        return record


# Runs a batch's commands (as RQ wrote them) atomically in one round trip and returns the queue length. One EVALSHA
# with flat arguments costs the receiver a fraction of what packing MULTI, each command and EXEC does in redis-py.
# ARGV: for each command, its argument count, then the command and its arguments.
_RUN_COMMANDS = """
local i = 1
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
return redis.call('LLEN', KEYS[1])
"""


def _flatten(commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any] | None:
    """The recorded commands as _RUN_COMMANDS arguments, or None if RQ used a form this does not know."""
    argv: list[Any] = []
    for name, args, kwargs in commands:
        flat: list[Any] = [name.upper(), *args]
        if kwargs:
            if name != "hset" or set(kwargs) != {"mapping"}:
                return None
            for field, value in kwargs["mapping"].items():
                flat += [field, value]
        argv += [len(flat), *flat]
    return argv


class GroupCommitter:
    """Leader-style group commit, as databases do it: a write starts as soon as a writer slot is free, and
    whatever arrives while writes are in flight goes out together in the next one. Under light load a batch
    is one event and waits for nothing; under heavy load batches grow by themselves, up to `batch_max_events`.
    `batch_max_wait_ms` adds an optional linger before each write (0, the default, means none)."""

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
        self._run_commands = redis.register_script(_RUN_COMMANDS)
        # RQ builds the job (it reads the server version once through this client); the bytes go out on `redis`.
        self._queue = Queue(INGEST_QUEUE, connection=sync_redis, serializer=JSONSerializer)
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
            if self._linger > 0:
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
            self._on_commit(len(batch), time.perf_counter() - started)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _write(self, events: Sequence[AcceptedEvent]) -> int:
        """One MULTI/EXEC: the job and its queue entry land together or not at all. Returns the queue length."""
        job = Queue.prepare_data(
            NORMALIZE_JOB,
            args=([event.as_job_arg() for event in events],),
            timeout=self._job_timeout,
            result_ttl=0,
            failure_ttl=30 * 86400,
            description=f"normalize {len(events)} events",
        )
        recorded = _RecordedPipeline()
        self._queue.enqueue_many([job], pipeline=recorded)  # type: ignore[arg-type]
        argv = _flatten(recorded.commands)
        if argv is not None:
            return int(await self._run_commands(keys=[self._queue.key], args=argv))
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, args, kwargs in recorded.commands:
                getattr(pipe, name)(*args, **kwargs)
            pipe.llen(self._queue.key)
            results = await pipe.execute()
        return int(results[-1])

    async def refresh_depth(self) -> int:
        """Read the queue length now (for /readyz and when no batch was written lately)."""
        self.queue_depth, self.queue_depth_at = int(await self._redis.llen(self._queue.key)), time.monotonic()
        return self.queue_depth
