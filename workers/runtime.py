"""What a worker process holds open for its jobs: settings, Redis, the audit store and the built sinks.

RQ calls jobs by import path with JSON arguments only, so a job finds its connections here. The runtime is
installed once per process by the worker entry point (or a test) — never created at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis import Redis
from rq import Queue

from audit.stores import AuditStore
from broker.queues import DELIVER_QUEUE, INGEST_QUEUE, JobSerializer
from config.settings import Settings
from events.records import AuditRecord
from sinks import Sink, build_sink


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    store: AuditStore
    _sinks: dict[str, Sink] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, redis: Redis | None = None) -> Runtime:
        connection = redis or Redis.from_url(settings.redis.url, socket_timeout=30, health_check_interval=30)
        from audit.chain import open_signed_store

        return cls(settings, connection, open_signed_store(settings))

    def queue(self, name: str) -> Queue:
        return Queue(name, connection=self.redis, serializer=JobSerializer)

    @property
    def ingest_queue(self) -> Queue:
        return self.queue(INGEST_QUEUE)

    @property
    def deliver_queue(self) -> Queue:
        return self.queue(DELIVER_QUEUE)

    def route(self, record: AuditRecord) -> list[str]:
        """The sinks a record goes to, by each sink's `topics` / `tenants` / `exclude_topics` globs."""
        return [s.name for s in self.settings.sinks if s.routes(record.tenant, record.topic)]

    def sink(self, name: str) -> Sink | None:
        """The sink named `name`, built on first use and kept (its connections stay warm between jobs)."""
        if name not in self._sinks:
            for sink_settings in self.settings.sinks:
                if sink_settings.name == name:
                    sink = build_sink(sink_settings)
                    # A sink that keeps state shared by all workers (the Slack pacing bucket) asks for Redis.
                    use_redis = getattr(sink, "use_redis", None)
                    if callable(use_redis):
                        use_redis(self.redis)
                    self._sinks[name] = sink
        return self._sinks.get(name)

    def close(self) -> None:
        for sink in self._sinks.values():
            sink.close()
        self._sinks.clear()
        self.store.close()


_current: list[Runtime] = []


def install(runtime: Runtime) -> None:
    _current[:] = [runtime]


def uninstall() -> None:
    while _current:
        _current.pop().close()


def current() -> Runtime:
    if not _current:
        raise RuntimeError("no keytrail runtime installed in this process (start it with `keytrail worker`)")
    return _current[0]
