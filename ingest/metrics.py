"""The receiver's Prometheus metrics, on a registry of the app's own (no process-global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keytrail_webhooks_total",
            "Webhook deliveries answered, by tenant and HTTP status",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.batches = Histogram(
            "keytrail_commit_batch_events",
            "Events per group-commit batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "keytrail_commit_seconds",
            "Time to write one batch to Redis and have it acknowledged",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "keytrail_ingest_queue_jobs", "Normalize jobs waiting in Redis (last seen)", registry=self.registry
        )

        # The pipeline as Redis sees it, read at scrape time, so one receiver's /metrics shows the whole system.
        self.jobs = Gauge(
            "keytrail_jobs",
            "RQ jobs by queue and state (queued, scheduled = waiting for a retry, failed)",
            ["queue", "state"],
            registry=self.registry,
        )
        self.workers = Gauge("keytrail_workers_alive", "Workers whose liveness key is fresh", registry=self.registry)
        self.sinks_disabled = Gauge(
            "keytrail_sinks_disabled", "Sinks disabled by their peer (HTTP 410) until replayed", registry=self.registry
        )

        self._answered: dict[tuple[str, int], Any] = {}

    def answered(self, tenant: str, status: int) -> None:
        # labels() costs more than the increment; children are looked up once per (tenant, status).
        child = self._answered.get((tenant, status))
        if child is None:
            child = self._answered[(tenant, status)] = self.requests.labels(tenant, str(status))
        child.inc()

    def committed(self, events: int, seconds: float, queue_depth: int) -> None:
        self.batches.observe(events)
        self.commit_seconds.observe(seconds)
        self.queue_depth.set(queue_depth)
