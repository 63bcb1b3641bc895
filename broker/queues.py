"""Names shared by the receiver and the workers: RQ queues, job paths, Redis keys, and the job serializer."""

import orjson

INGEST_QUEUE = "ingest"
DELIVER_QUEUE = "deliver"
QUEUES = (INGEST_QUEUE, DELIVER_QUEUE)  # every queue; a worker process consumes one (workers/runner.py)
# By import path, so the receiver enqueues without importing the workers' code.
NORMALIZE_JOB = "workers.jobs.normalize_batch"
DELIVER_JOB = "workers.jobs.deliver"
DRIFT_CHECK_JOB = "workers.jobs.check_subscriptions"

PING_TTL_SECONDS = 3600

# A job that raises (the audit store unreachable, a bug) is retried by RQ on this schedule (seconds, the last one
# repeated) for about eight hours before it lands in RQ's failed registry. Sink failures are not exceptions: the
# deliver job returns its own Retry with the sink's backoff (workers/jobs.py).
JOB_RETRY_INTERVALS = (1, 2, 5, 10, 30, 60, 120, 300)
JOB_RETRY_MAX = 100


def ping_key(tenant: str, marker: str) -> str:
    """Where the receiver records a ping so `keytrail subscribe` can see that it arrived."""
    return f"keytrail:ping:{tenant}:{marker}"


def alive_key(worker_name: str) -> str:
    """A worker's liveness key: refreshed every second, missing within seconds of a SIGKILL."""
    return f"keytrail:alive:{worker_name}"


def consumers_key(queue: str) -> str:
    """A set of the names of workers that consume `queue`; a member is live only while its `alive_key` exists."""
    return f"keytrail:consumers:{queue}"


def sink_disabled_key(sink: str) -> str:
    return f"keytrail:sink:{sink}:disabled"


def deliver_guard_key(sink: str) -> str:
    """Set while a deliver job for this sink is queued (or waiting out a backoff), so batches do not queue more."""
    return f"keytrail:sink:{sink}:deliver-queued"


def ingest_consumers_key() -> str:
    """Refreshed by every live ingest worker; the receiver lingers to build bigger batches only while it exists."""
    return "keytrail:ingest:consumers"


def sink_backoff_key(sink: str) -> str:
    return f"keytrail:sink:{sink}:backoff_until"


def recovering_key(job_id: str) -> str:
    """Held for a few seconds by the one worker that requeues a dead worker's job, so no other requeues it too."""
    return f"keytrail:recovering:{job_id}"


def drift_check_key() -> str:
    """Held for one drift-check interval by the worker that enqueued the check: one check per interval in all."""
    return "keytrail:drift-check:scheduled"


def decoded(raw: bytes | str) -> str:
    """A name as Redis hands it back (bytes: keytrail's clients do not decode replies)."""
    return raw.decode() if isinstance(raw, bytes) else raw


class JobSerializer:
    """RQ's job serializer for keytrail's queues: JSON (never pickle), written with orjson because the receiver
    serializes every batch it commits. Give it to every Queue and Worker on keytrail's queues."""

    @staticmethod
    def dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

    @staticmethod
    def loads(data: bytes | str) -> object:
        return orjson.loads(data)
