"""Enqueueing RQ jobs in one atomic Redis call: RQ builds the job, a Lua script writes it (optionally only once).

RQ's `enqueue_many` writes a job as several commands. Recording them into a stand-in pipeline and running them in
one EVALSHA keeps RQ the authority on how a job is stored, costs one round trip, and lets a guard key make the
enqueue conditional in the same atomic step ("enqueue a deliver job for this sink unless one is already queued").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue
from rq.queue import EnqueueData

# ARGV[1]: a guard key ('' for none), ARGV[2]: its TTL in seconds; then, for each command, its argument count,
# the command and its arguments. With a guard that already exists nothing is written and -1 is returned;
# otherwise the queue's length afterwards.
RUN_COMMANDS = """
if ARGV[1] ~= '' then
  if not redis.call('SET', ARGV[1], '1', 'NX', 'EX', ARGV[2]) then return -1 end
end
local i = 3
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
return redis.call('LLEN', KEYS[1])
"""


class _RecordedPipeline:
    """Stands in for a Redis pipeline so RQ's own `enqueue_many` records the commands it would send."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> _RecordedPipeline:
            self.commands.append((name, args, kwargs))
            return self

        return record


class UnknownCommandForm(Exception):
    """RQ wrote a command this module cannot flatten (a newer RQ); callers fall back to a plain enqueue."""


def script_args(queue: Queue, jobs: Sequence[EnqueueData], guard: str = "", guard_ttl: int = 0) -> list[Any]:
    """The ARGV for RUN_COMMANDS that enqueues `jobs` on `queue` (KEYS[1] is `queue.key`)."""
    recorded = _RecordedPipeline()
    queue.enqueue_many(jobs, pipeline=recorded)  # type: ignore[arg-type]
    argv: list[Any] = [guard, guard_ttl]
    for name, args, kwargs in recorded.commands:
        flat: list[Any] = [name.upper(), *args]
        if kwargs:
            if name != "hset" or set(kwargs) != {"mapping"}:
                raise UnknownCommandForm(name)
            for field, value in kwargs["mapping"].items():
                flat += [field, value]
        argv += [len(flat), *flat]
    return argv


def enqueue_atomically(
    redis: Redis, queue: Queue, jobs: Sequence[EnqueueData], *, guard: str = "", ttl: int = 0
) -> int:
    """Enqueue `jobs` in one atomic call; with `guard`, only if that key does not exist (it is then set for `ttl`
    seconds). Returns the queue length, or -1 when the guard held."""
    try:
        argv = script_args(queue, jobs, guard, ttl)
    except UnknownCommandForm:
        if guard and not redis.set(guard, "1", nx=True, ex=ttl):
            return -1
        with redis.pipeline() as pipe:
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.llen(queue.key)
            return int(pipe.execute()[-1])
    return int(redis.register_script(RUN_COMMANDS)(keys=[queue.key], args=argv))
