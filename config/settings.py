"""The typed, frozen settings tree that every entry point builds once and passes down."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# `X as X` is the explicit re-export mypy --strict wants: callers import display_url from here.
from config.urls import display_url as display_url  # noqa: PLC0414

DEFAULT_TOPICS = (
    "api-key.created",
    "api-key.updated",
    "api-key.deleted",
    "api-key.firstUsed",
    "access-key.created",
    "access-key.updated",
    "access-key.deleted",
    "project.updated",
)


class Secret:
    """A secret value whose repr, str and format never show it; call `reveal()` at the point of use.

    Not a dataclass on purpose: `dataclasses.asdict(settings)` would turn one into a plain dict holding the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        value: str = object.__getattribute__(self, "_value")
        return value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self.reveal()

    def __hash__(self) -> int:
        return hash((Secret, self.reveal()))

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __copy__(self) -> Secret:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 256 * 1024
    # A request's head must arrive within this many seconds of its first byte (of the connection, when it is new),
    # its body within this many of the head: then 408 and the connection closes (ingest/server.py). 0 = no bound.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0


def _repr_masking_url(self: Any) -> str:
    """A settings repr whose `url` shows its password masked (see `display_url`)."""
    shown = []
    for f in fields(self):
        value = getattr(self, f.name)
        shown.append(f"{f.name}={display_url(value) if f.name == 'url' else value!r}")
    return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    __repr__ = _repr_masking_url

    url: str = "redis://127.0.0.1:6379/0"
    # Start a private redis-server (AOF on, data in the data dir) when `keytrail up` finds none at `url`.
    autostart: bool = True


@dataclass(frozen=True, slots=True)
class IngestSettings:
    # Group commit: at most this many events per Redis write. While workers are behind, each write waits this
    # long (ms) for more events, so the queue gets fewer, bigger jobs (see ingest/committer.py).
    batch_max_events: int = 256
    batch_max_wait_ms: float = 10.0
    # Backpressure: above this many queued ingest jobs (batches) the receiver answers 503 + Retry-After.
    high_water_mark: int = 20_000
    retry_after_seconds: int = 5


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    # Delivery retries: exponential from `backoff_base_seconds`, capped at `backoff_ceiling_seconds`, with jitter.
    max_attempts: int = 2_000
    backoff_base_seconds: float = 1.0
    backoff_ceiling_seconds: float = 300.0
    # How often a worker looks for jobs that a dead worker left behind (SIGKILL, OOM, power loss).
    recovery_interval_seconds: float = 2.0
    # A worker whose liveness key is older than this is dead, and its started jobs are requeued.
    liveness_ttl_seconds: float = 6.0
    job_timeout_seconds: int = 120


@dataclass(frozen=True, slots=True)
class AuditSettings:
    __repr__ = _repr_masking_url

    url: str = "sqlite:///data/keytrail.db"
    # Key for the fingerprints of raw API keys; generated once into the data dir when not configured.
    pepper: Secret | None = None


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One bearer token of the audit API: its name (in the reader's log) and the tenants it may read."""

    name: str
    token: Secret
    tenants: tuple[str, ...] = ("*",)

    def reads(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants

    @property
    def reads_all(self) -> bool:
        return "*" in self.tenants


@dataclass(frozen=True, slots=True)
class ApiSettings:
    # A plain string in `[api] tokens` becomes an ApiToken named `token-N` (1-based) that reads every tenant.
    tokens: tuple[ApiToken, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantSettings:
    name: str
    token: Secret | None = None
    signing_secrets: tuple[Secret, ...] = ()
    access_key: Secret | None = None
    account_id: str | None = None
    project_ids: tuple[str, ...] = ()
    public_url: str | None = None


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """What every sink shares (name, type, routing); `options` holds its type's own keys, checked by the sink."""

    name: str
    type: str
    topics: tuple[str, ...] = ("*",)
    tenants: tuple[str, ...] = ("*",)
    exclude_topics: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def routes(self, tenant: str, topic: str) -> bool:
        """True when a record of this tenant and topic goes to this sink."""
        return (
            any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)
            and any(fnmatch.fnmatchcase(tenant, pattern) for pattern in self.tenants)
            and not any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.exclude_topics)
        )


@dataclass(frozen=True, slots=True)
class AuthApiSettings:
    base_url: str = "https://api.theauthapi.com"
    timeout_seconds: float = 10.0
    # How often the scheduled drift check compares live subscriptions with the desired ones; 0 turns it off.
    drift_check_interval_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("data")
    log_level: str = "info"
    server: ServerSettings = ServerSettings()
    redis: RedisSettings = RedisSettings()
    ingest: IngestSettings = IngestSettings()
    worker: WorkerSettings = WorkerSettings()
    audit: AuditSettings = AuditSettings()
    api: ApiSettings = ApiSettings()
    authapi: AuthApiSettings = AuthApiSettings()
    tenants: Mapping[str, TenantSettings] = field(default_factory=dict)
    sinks: tuple[SinkSettings, ...] = ()
    # Where the settings came from, for `config check` and error messages ("embedded defaults" or a path).
    source: str = "embedded defaults"


# The config file's tables that each fill one section of `Settings` (`tenants` and `sinks` are read on their own).
SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "redis": RedisSettings,
    "ingest": IngestSettings,
    "worker": WorkerSettings,
    "audit": AuditSettings,
    "api": ApiSettings,
    "authapi": AuthApiSettings,
}
