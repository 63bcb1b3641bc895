"""The RQ jobs: `normalize_batch` (raw events → stored records → deliveries) and `deliver` (records → one sink).

Why one deliver job per sink: each sink fails, backs off and retries on its own, so a sink that is down for hours
never delays or duplicates what the others receive.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from rq import Queue, Retry, get_current_job
from rq.timeouts import JobTimeoutException

from audit.stores import DeliveryOutcomes
from authapi.drift import check_drift_all
from broker.enqueue import enqueue_atomically
from broker.queues import (
    DELIVER_JOB,
    JOB_RETRY_INTERVALS,
    JOB_RETRY_MAX,
    deliver_guard_key,
    sink_backoff_key,
    sink_disabled_key,
)
from config.settings import WorkerSettings
from events.records import AuditRecord
from events.version import VERSION
from sinks import DeliveryReport, Outcome, SinkDisabled, SinkRejected, SinkUnavailable
from workers.normalize import normalize, unreadable_record
from workers.runtime import current

log = structlog.get_logger("keytrail.worker")
DELIVER_CHUNK = 500
# A queued deliver job's guard outlives a lost job by at most this long (then the next batch queues a new one).
GUARD_TTL = 600
# RQ counts returned Retry objects against `max`; keytrail counts attempts per record itself (the deliveries table)
# and dead-letters a record at `max_attempts`, so RQ's own limit is only a backstop.
RQ_RETRY_BACKSTOP = 1_000_000
# A deliver lease outlasts the job timeout by this much: the time RQ may take to stop a job that overran.
LEASE_MARGIN_SECONDS = 60


def normalize_one(event: Any) -> AuditRecord:
    """The event's record, or its unreadable record when anything about it defeats the normalizer: one event
    never fails the batch it came in (the batch would be retried for hours, its neighbours held back with it)."""
    try:
        return normalize(event, version=VERSION)
    except JobTimeoutException:
        raise  # RQ's job timeout is about the whole job, not this event
    except Exception as exc:  # not swallowed: the event is kept as an unreadable record, and logged
        tenant = event.get("tenant") if isinstance(event, dict) else None
        log.warning("event_unreadable", tenant=tenant if isinstance(tenant, str) else None, error=type(exc).__name__)
        return unreadable_record(event, version=VERSION, error=type(exc).__name__)


def normalize_batch(events: list[dict[str, Any]]) -> dict[str, int]:
    """Normalize a committed batch, append it to the audit store, and enqueue one deliver job per sink.

    Safe to run twice (RQ is at-least-once): records are idempotent on (tenant, event id), and deliveries
    already made are not made again."""
    runtime = current()
    records = [normalize_one(event) for event in events]
    result = runtime.store.append(records, runtime.route)
    enqueue_deliveries(runtime.deliver_queue, result.pending, runtime.settings.worker)
    log.info(
        "batch_stored",
        events=len(events),
        new=len(result.new_ids),
        duplicates=len(result.existing_ids),
        sinks=len(result.pending),
    )
    return {"new": len(result.new_ids), "duplicates": len(result.existing_ids)}


def enqueue_deliveries(queue: Queue, pending: dict[str, list[str]], worker: WorkerSettings) -> None:
    """At most one queued deliver job per sink. Its guard key is set atomically with the enqueue and deleted when
    the job starts, and the job then also sweeps the sink's other pending deliveries; so under load one job carries
    many records instead of RQ running one job per small batch (RQ costs ~20 round trips per job)."""
    for sink, ids in pending.items():
        job = Queue.prepare_data(
            DELIVER_JOB,
            args=(sink, ids[:DELIVER_CHUNK]),
            timeout=worker.job_timeout_seconds,
            result_ttl=0,
            failure_ttl=30 * 86400,
            description=f"deliver to {sink}",
            retry=Retry(max=JOB_RETRY_MAX, interval=list(JOB_RETRY_INTERVALS)),
        )
        enqueue_atomically(queue.connection, queue, [job], guard=deliver_guard_key(sink), ttl=GUARD_TTL)


def backoff_seconds(attempt: int, worker: WorkerSettings, retry_after: float | None = None) -> int:
    """Exponential from the base, capped at the ceiling, with "equal jitter"; never sooner than the peer asked."""
    ceiling = worker.backoff_ceiling_seconds
    exponential: float = min(ceiling, worker.backoff_base_seconds * 2.0 ** max(0, attempt - 1))
    jittered = exponential / 2 + random.uniform(0, exponential / 2)  # noqa: S311 - jitter, not a secret
    return max(1, math.ceil(max(jittered, retry_after or 0.0)))


def _send(sink_name: str, records: list[AuditRecord]) -> tuple[DeliveryReport, bool]:
    """Send through the sink; returns the report and whether the sink asked to be disabled."""
    runtime = current()
    sink = runtime.sink(sink_name)
    assert sink is not None
    try:
        report = sink.send(records)
    except SinkUnavailable as exc:
        if exc.alert:
            log.error("sink_needs_attention", sink=sink_name, reason=exc.reason, records=len(records))
        report = DeliveryReport.all(records, Outcome.RETRY, exc.reason)
        report.retry_after = exc.retry_after
    except SinkDisabled as exc:
        log.error("sink_disabled", sink=sink_name, reason=exc.reason)
        return DeliveryReport.all(records, Outcome.REJECTED, f"sink disabled: {exc.reason}"), True
    except SinkRejected as exc:
        report = DeliveryReport.all(records, Outcome.REJECTED, exc.reason)
    except Exception as exc:  # a user's plug-in sink may raise anything: keep the records, retry
        log.exception("sink_crashed", sink=sink_name, error=type(exc).__name__)
        report = DeliveryReport.all(records, Outcome.RETRY, f"sink raised {type(exc).__name__}")
    return report, False


def lease_seconds(worker: WorkerSettings) -> float:
    """How long a deliver job holds what it claimed: longer than RQ lets a job run (it stops one at the job
    timeout), so a live job never loses a lease mid-send, and a dead job's records are free again soon after."""
    return worker.job_timeout_seconds + LEASE_MARGIN_SECONDS


def lease_owner() -> str:
    """The running job's id: a retried or recovered run of the same job (RQ keeps the id) takes back what its
    killed predecessor had claimed at once, instead of waiting for the lease to expire."""
    job = get_current_job()
    return f"job:{job.id}" if job is not None else f"call:{uuid.uuid4().hex}"


def _claim(sink_name: str, record_ids: list[str], owner: str) -> tuple[list[tuple[AuditRecord, int]], bool]:
    """This job's records still owed to the sink, plus the sink's other owed deliveries (the sweep that lets one
    job carry what later batches added), leased to this job. Returns them and whether the sweep filled a page."""
    runtime = current()
    owed = runtime.store.claim(
        sink_name,
        record_ids,
        limit=DELIVER_CHUNK,
        owner=owner,
        lease_seconds=lease_seconds(runtime.settings.worker),
    )
    return owed, len(owed) >= DELIVER_CHUNK


def deliver(sink_name: str, record_ids: list[str]) -> Retry | dict[str, int]:
    """Deliver these records, and the sink's other pending ones, to one sink. Returns a `Retry` (RQ reschedules
    the job) while some are owed.

    What it sends it first leases (`AuditStore.claim`), so deliver jobs on any number of workers never send one
    record twice; a job killed mid-send leaves a lease that its recovered run, or anyone after expiry, takes over."""
    runtime = current()
    worker = runtime.settings.worker
    guard = deliver_guard_key(sink_name)
    owner = lease_owner()
    if runtime.sink(sink_name) is None:
        # Removed from the config: keep the records as dead letters (replayable if the sink comes back).
        owed, _ = _claim(sink_name, record_ids, owner)
        dead = {record.record_id: "sink no longer configured" for record, _ in owed}
        runtime.store.record_outcomes(sink_name, DeliveryOutcomes(dead=dead), owner=owner)
        log.error("sink_not_configured", sink=sink_name, records=len(dead))
        return {"dead": len(dead)}
    # A sink that just failed is not tried again by every job: they wait out its backoff, and while this job waits
    # the guard stays set, so new records join it instead of queueing jobs of their own.
    backoff_until = float(runtime.redis.get(sink_backoff_key(sink_name)) or 0)
    if backoff_until > time.time() + 0.5:
        wait = max(1, math.ceil(backoff_until - time.time()))
        runtime.redis.set(guard, "1", ex=wait + GUARD_TTL)
        return Retry(max=RQ_RETRY_BACKSTOP, interval=[wait])
    # From here on, a record stored after this line is either in the sweep below or queues a job of its own.
    runtime.redis.delete(guard)
    owed, more = _claim(sink_name, record_ids, owner)
    if not owed:
        return {"delivered": 0}
    records = [record for record, _ in owed]
    if runtime.redis.exists(sink_disabled_key(sink_name)):
        dead = dict.fromkeys((r.record_id for r in records), "sink disabled")
        runtime.store.record_outcomes(sink_name, DeliveryOutcomes(dead=dead), owner=owner)
        return {"dead": len(records)}

    report, disable = _send(sink_name, records)
    if disable:
        runtime.redis.set(sink_disabled_key(sink_name), "1")
    attempts = {record.record_id: made + 1 for record, made in owed}
    retry_ids = [r.record_id for r in records if report.outcomes.get(r.record_id, Outcome.RETRY) is Outcome.RETRY]
    attempt = max((attempts[rid] for rid in retry_ids), default=1)
    delay = backoff_seconds(attempt, worker, report.retry_after)
    next_at = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(timespec="seconds")
    outcomes = DeliveryOutcomes(
        delivered=report.ids(Outcome.DELIVERED),
        dead={rid: report.reasons.get(rid, "rejected") for rid in report.ids(Outcome.REJECTED)},
        retrying={},
    )
    for rid in retry_ids:
        reason = report.reasons.get(rid, "not acknowledged")
        if attempts[rid] >= worker.max_attempts:
            outcomes.dead[rid] = f"out of attempts ({attempts[rid]}): {reason}"
        else:
            outcomes.retrying[rid] = (reason, next_at)
    runtime.store.record_outcomes(sink_name, outcomes, owner=owner)
    log.info(
        "delivery_attempted",
        sink=sink_name,
        delivered=len(outcomes.delivered),
        dead=len(outcomes.dead),
        retrying=len(outcomes.retrying),
    )
    if outcomes.retrying:
        runtime.redis.set(sink_backoff_key(sink_name), str(time.time() + delay), ex=delay + 60)
        runtime.redis.set(guard, "1", ex=delay + GUARD_TTL)
        return Retry(max=RQ_RETRY_BACKSTOP, interval=[delay])
    if outcomes.delivered:
        runtime.redis.delete(sink_backoff_key(sink_name))
    if more:  # the sweep filled a page: more is pending, so keep going in a fresh job
        enqueue_deliveries(runtime.deliver_queue, {sink_name: []}, worker)
    return {"delivered": len(outcomes.delivered), "dead": len(outcomes.dead)}


def check_subscriptions() -> dict[str, int]:
    """Scheduled drift check: compare each tenant's live subscriptions at The Auth API with the desired ones."""
    drifts = check_drift_all(current().settings)
    return {"drifts": len(drifts)}
