"""The bootstrap: subscribes keytrail's receiver at The Auth API, proves the path with a ping, and checks for drift.

A tenant's desired state is one subscription per project, found by its URL (`{public_url}/hooks/theauthapi/{tenant}`):
topics, `httpMethod` POST, `customHeaders` carrying `X-Keytrail-Token`, `status` live. `plan_tenant` compares it with
what the API holds, `authapi.convergence` makes it so, `check_drift_all` is the scheduled read-only comparison, and
`send_ping` + `wait_for_ping` prove a request really travels The Auth API → receiver → Redis.

Requests carry only the fields of the spec's DTO for that request (`CREATE_FIELDS`, `UPDATE_FIELDS`): a NestJS
service may drop or refuse anything else. Where the spec and the vendor's samples disagree about the ping (reference
§2.2) it sends what satisfies both readings, and the spec's alone when the service refuses the samples' field.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis
import structlog

from authapi.client import AuthApiClient, AuthApiError
from broker.queues import ping_key
from config.settings import DEFAULT_TOPICS, Secret, Settings, TenantSettings

log = structlog.get_logger(__name__)

SUBSCRIPTION_NAME = "keytrail"
TOKEN_HEADER = "X-Keytrail-Token"  # noqa: S105 (a header name, not a secret)
PING_FIELD = "keytrail_ping"
# The fields keytrail owns on its subscription, in the API's spelling; `url` is the identity, not compared.
COMPARED_FIELDS = ("name", "topics", "httpMethod", "customHeaders", "status")
# The spec's request DTOs (components.schemas): CreateWebhookDTO, and UpdateWebhookDTO, which PATCH is limited to.
CREATE_FIELDS = ("name", "url", "topics", "httpMethod", "projectId", "accountId", "customHeaders", "status")
UPDATE_FIELDS = ("name", "url", "customHeaders")
# What a PATCH can repair; any other difference needs a new subscription.
PATCHABLE = frozenset(UPDATE_FIELDS)
# Names a topic object may carry its name under (the shape of GET /webhooks/topics is UNKNOWN).
TOPIC_NAME_FIELDS = ("name", "topic", "id", "value", "key", "event")
# Answers meaning "this endpoint does not exist here": fall back to the known topics rather than fail.
MISSING_ENDPOINT = frozenset({404, 405, 501})


class BootstrapError(Exception):
    """The bootstrap cannot go on for a reason an operator must fix; `str()` is one line."""


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"  # PATCH with UpdateWebhookDTO's fields
    REPLACE = "replace"  # a difference PATCH cannot repair: create the right one, then delete this one
    UNCHANGED = "unchanged"
    DELETE_DUPLICATE = "delete-duplicate"
    DELETE_ACCOUNT_WIDE = "delete-account-wide"  # keytrail's URL on a hook for the whole account


def hook_url(public_url: str, tenant: str) -> str:
    return f"{public_url.rstrip('/')}/hooks/theauthapi/{tenant}"


def same_url(a: str, b: str) -> bool:
    """URLs compare equal ignoring scheme/host case and a trailing slash."""

    def norm(url: str) -> str:
        parts = urlsplit(url.strip())
        return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))

    return norm(a) == norm(b)


@dataclass(frozen=True, slots=True)
class Desired:
    """keytrail's subscription as it should be in one project. The token stays a `Secret` until `body()`."""

    tenant: str
    project_id: str
    account_id: str | None
    url: str
    topics: tuple[str, ...]
    token: Secret | None
    name: str = SUBSCRIPTION_NAME
    http_method: str = "POST"
    status: str = "live"

    def headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: self.token.reveal()} if self.token is not None else {}

    def fields(self) -> dict[str, Any]:
        """Every field keytrail sets, in the API's spelling."""
        fields: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "topics": list(self.topics),
            "httpMethod": self.http_method,
            "projectId": self.project_id,
            "customHeaders": self.headers(),
            "status": self.status,
        }
        if self.account_id:
            fields["accountId"] = self.account_id
        return fields

    def create_body(self) -> dict[str, Any]:
        """POST /webhooks: CreateWebhookDTO."""
        return {k: v for k, v in self.fields().items() if k in CREATE_FIELDS}

    def update_body(self) -> dict[str, Any]:
        """PATCH /webhooks/{id}: UpdateWebhookDTO only (name and url are required there, so always sent)."""
        return {k: v for k, v in self.fields().items() if k in UPDATE_FIELDS}


def differences(desired: Desired, existing: Mapping[str, Any]) -> tuple[str, ...]:
    """The compared fields whose live value differs from the desired one.

    A field the API did not return at all is not counted: its shape is UNKNOWN, and the ping proves the headers.
    """
    found: list[str] = []
    for name in COMPARED_FIELDS:
        if name not in existing:
            continue
        live = existing[name]
        if name == "topics":
            same = isinstance(live, list) and {str(t) for t in live} == set(desired.topics)
        elif name == "customHeaders":
            same = _same_headers(live, desired.headers())
        elif name == "httpMethod":
            same = str(live).upper() == desired.http_method
        else:
            same = live == desired.fields()[name]
        if not same:
            found.append(name)
    return tuple(found)


def _same_headers(live: Any, wanted: Mapping[str, str]) -> bool:
    if live is None:
        live = {}
    if not isinstance(live, Mapping):
        return False
    return {str(k).lower(): str(v) for k, v in live.items()} == {k.lower(): v for k, v in wanted.items()}


@dataclass(frozen=True, slots=True)
class Change:
    """One step of a plan; `differences` names the fields an update changes (never their values: one is a token)."""

    tenant: str
    project_id: str
    action: Action
    desired: Desired
    webhook_id: str | None = None
    differences: tuple[str, ...] = ()
    live_status: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "project_id": self.project_id,
            "action": str(self.action),
            "webhook_id": self.webhook_id,
            "differences": list(self.differences),
        }


@dataclass(frozen=True, slots=True)
class Drift:
    """keytrail's subscription in one project is not what it should be; `problems` says how."""

    tenant: str
    project_id: str
    webhook_id: str | None
    problems: tuple[str, ...]

    def row(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "project_id": self.project_id,
            "webhook_id": self.webhook_id,
            "problems": list(self.problems),
        }


@dataclass(slots=True)
class Topics:
    names: tuple[str, ...]
    source: str  # "api", "fallback" or "option"
    warnings: list[str] = field(default_factory=list)


def parse_topics(body: Any) -> tuple[str, ...]:
    """Topic names from an array of strings, an array of objects with a name-like field, or `{"topics": [...]}`."""
    if isinstance(body, Mapping):
        body = body.get("topics", body.get("data"))
    if not isinstance(body, list):
        return ()
    names: list[str] = []
    for item in body:
        if isinstance(item, str):
            name: Any = item
        elif isinstance(item, Mapping):
            name = next((item[k] for k in TOPIC_NAME_FIELDS if isinstance(item.get(k), str)), None)
        else:
            name = None
        if isinstance(name, str) and name.strip() and name.strip() not in names:
            names.append(name.strip())
    return tuple(names)


def fetch_topics(client: AuthApiClient, chosen: Sequence[str] | None = None) -> Topics:
    """`chosen` when given; else GET /webhooks/topics; else the 8 known topics with a warning."""
    if chosen:
        return Topics(tuple(dict.fromkeys(chosen)), "option")
    try:
        names = parse_topics(client.topics())
    except AuthApiError as exc:
        if exc.status not in MISSING_ENDPOINT:
            raise
        reason = f"GET /webhooks/topics answered HTTP {exc.status}"
    else:
        if names:
            return Topics(names, "api")
        reason = "GET /webhooks/topics returned no topic names keytrail can read"
    warning = f"{reason}; subscribing the {len(DEFAULT_TOPICS)} known topics instead"
    log.warning("topics_fallback_used", reason=reason)
    return Topics(DEFAULT_TOPICS, "fallback", [warning])


def tenant_projects(client: AuthApiClient, tenant: TenantSettings) -> tuple[str, ...]:
    """The configured project ids; when none are configured, every project of the tenant's account."""
    if tenant.project_ids:
        return tenant.project_ids
    if not tenant.account_id:
        raise BootstrapError(f"tenant {tenant.name}: set tenants.{tenant.name}.project_ids or account_id")
    body = client.list_projects(tenant.account_id)
    ids = [str(p["id"]) for p in body if isinstance(p, Mapping) and p.get("id")] if isinstance(body, list) else []
    if not ids:
        raise BootstrapError(f"tenant {tenant.name}: account {tenant.account_id} has no projects")
    return tuple(ids)


def require_subscribable(tenant: TenantSettings) -> str:
    """The tenant's hook URL, or a one-line reason it cannot be subscribed."""
    missing = [name for name in ("access_key", "public_url") if getattr(tenant, name) is None]
    if missing:
        settings = " and ".join(f"tenants.{tenant.name}.{name}" for name in missing)
        raise BootstrapError(f"tenant {tenant.name}: set {settings} to subscribe")
    assert tenant.public_url is not None
    return hook_url(tenant.public_url, tenant.name)


def desired_for(tenant: TenantSettings, project_id: str, topics: Sequence[str]) -> Desired:
    return Desired(
        tenant=tenant.name,
        project_id=project_id,
        account_id=tenant.account_id,
        url=require_subscribable(tenant),
        topics=tuple(topics),
        token=tenant.token,
    )


def list_subscriptions(client: AuthApiClient, desired: Desired) -> list[Mapping[str, Any]]:
    """The project's subscriptions. The spec requires accountId, projectId and topic; the samples send projectId
    alone. Ask without `topic` first (it may filter), and when the API insists, ask once per topic and merge."""
    params = {"projectId": desired.project_id}
    if desired.account_id:
        params["accountId"] = desired.account_id
    try:
        found = _as_list(client.list_webhooks(params))
    except AuthApiError as exc:
        if exc.status != 400:
            raise
        merged: dict[str, Mapping[str, Any]] = {}
        for topic in dict.fromkeys((*desired.topics, *DEFAULT_TOPICS)):
            for hook in _as_list(client.list_webhooks({**params, "topic": topic})):
                merged.setdefault(str(hook.get("id")), hook)
        found = list(merged.values())
    # An API that ignores the filter must not make another project's subscription look like ours.
    return [h for h in found if h.get("projectId") in (None, desired.project_id)]


def _as_list(body: Any) -> list[Mapping[str, Any]]:
    if isinstance(body, Mapping):
        body = body.get("data", body.get("webhooks", []))
    if not isinstance(body, list):
        return []
    return [item for item in body if isinstance(item, Mapping)]


def keytrails(hooks: Iterable[Mapping[str, Any]], url: str) -> list[Mapping[str, Any]]:
    return [h for h in hooks if isinstance(h.get("url"), str) and same_url(h["url"], url)]


def is_account_wide(hook: Mapping[str, Any]) -> bool:
    """A hook the API says belongs to no project (`projectId: null`): it gets every project's events. A hook that
    does not mention `projectId` at all is taken to be the listed project's (the shape is UNKNOWN)."""
    return "projectId" in hook and hook["projectId"] is None


def fix_for(diff: Sequence[str]) -> Action:
    if not diff:
        return Action.UNCHANGED
    return Action.UPDATE if PATCHABLE.issuperset(diff) else Action.REPLACE


def _keeper_rank(desired: Desired, hook: Mapping[str, Any]) -> int:
    # An interrupted replace leaves the right subscription beside the wrong one: keep the right one.
    return {Action.UNCHANGED: 0, Action.UPDATE: 1, Action.REPLACE: 2}[fix_for(differences(desired, hook))]


def plan_project(client: AuthApiClient, desired: Desired) -> list[Change]:
    """Create when keytrail has no subscription here; else keep the one closest to the desired state (in sync,
    else repairable by PATCH, else any), repair it if it differs, and remove any further ones with keytrail's URL
    (left by an interrupted earlier run). Account-wide hooks are `plan_account_wide`'s."""
    found = keytrails(list_subscriptions(client, desired), desired.url)
    ours = [h for h in found if not is_account_wide(h)]
    tenant, project_id = desired.tenant, desired.project_id
    if not ours:
        return [Change(tenant, project_id, Action.CREATE, desired)]
    keeper = min(ours, key=lambda hook: _keeper_rank(desired, hook))  # min keeps the API's order among equals
    diff = differences(desired, keeper)
    status = keeper.get("status")
    live_status = status if isinstance(status, str) else None
    changes = [Change(tenant, project_id, fix_for(diff), desired, str(keeper.get("id")), diff, live_status)]
    changes += [
        Change(tenant, project_id, Action.DELETE_DUPLICATE, desired, str(h.get("id"))) for h in ours if h is not keeper
    ]
    return changes


def plan_account_wide(client: AuthApiClient, desireds: Sequence[Desired]) -> list[Change]:
    """keytrail's URL on an account-wide hook: keytrail subscribes per project, so such a hook only doubles every
    delivery (and may carry a stale token). Planned after the projects, so it is deleted only once each project
    has its own subscription."""
    seen: dict[str, Change] = {}
    for desired in desireds:
        for hook in keytrails(list_subscriptions(client, desired), desired.url):
            if is_account_wide(hook):
                webhook_id = str(hook.get("id"))
                change = Change(desired.tenant, "*", Action.DELETE_ACCOUNT_WIDE, desired, webhook_id)
                seen.setdefault(webhook_id, change)
    return list(seen.values())


def plan_tenant(
    client: AuthApiClient,
    tenant: TenantSettings,
    topics: Sequence[str],
    projects: Sequence[str],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Change]:
    changes: list[Change] = []
    desireds = [desired_for(tenant, project_id, topics) for project_id in projects]
    for desired in desireds:
        changes += plan_project(client, desired)
        if progress is not None:
            progress(desired.project_id)
    return changes + plan_account_wide(client, desireds)


def drift_of(change: Change) -> Drift | None:
    """What a planned change says about drift: a create means the subscription is gone, an update names fields."""
    if change.action is Action.UNCHANGED:
        return None
    if change.action is Action.CREATE:
        problems: tuple[str, ...] = ("missing",)
    elif change.action is Action.DELETE_DUPLICATE:
        problems = ("duplicate",)
    elif change.action is Action.DELETE_ACCOUNT_WIDE:
        problems = ("account-wide",)
    else:
        problems = tuple(
            ("paused" if change.live_status == "paused" else f"status {change.live_status}")
            if name == "status"
            else f"{name} changed"
            for name in change.differences
        )
    return Drift(change.tenant, change.project_id, change.webhook_id, problems)


def check_tenant(
    client: AuthApiClient,
    tenant: TenantSettings,
    topics: Sequence[str],
    projects: Sequence[str],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Drift]:
    plan = plan_tenant(client, tenant, topics, projects, progress=progress)
    return [drift for drift in map(drift_of, plan) if drift is not None]


def check_drift_all(settings: Settings) -> list[Drift]:
    """The scheduled check: every tenant with an access key and a public URL, compared read-only with its desired
    state. Each drift is logged as `subscription_drift_detected`; a tenant whose check fails is logged as
    `subscription_check_failed` and the others are still checked."""
    drifts: list[Drift] = []
    for tenant in settings.tenants.values():
        if tenant.access_key is None or tenant.public_url is None:
            continue
        try:
            with AuthApiClient.from_settings(settings, tenant) as client:
                topics = fetch_topics(client)
                found = check_tenant(client, tenant, topics.names, tenant_projects(client, tenant))
        except (AuthApiError, BootstrapError) as exc:
            log.error("subscription_check_failed", tenant=tenant.name, error=str(exc))
            continue
        for drift in found:
            log.warning(
                "subscription_drift_detected",
                tenant=drift.tenant,
                project_id=drift.project_id,
                webhook_id=drift.webhook_id,
                problems=list(drift.problems),
            )
        drifts += found
    return drifts


def unsubscribe_project(client: AuthApiClient, desired: Desired, *, dry_run: bool = False) -> list[str]:
    """Delete keytrail's subscriptions (by URL) in one project; returns their ids. Others are never touched."""
    deleted: list[str] = []
    for hook in keytrails(list_subscriptions(client, desired), desired.url):
        webhook_id = str(hook.get("id"))
        if not dry_run:
            delete_subscription(client, webhook_id)
            log.info("subscription_deleted", tenant=desired.tenant, project_id=desired.project_id, reason="unsubscribe")
        deleted.append(webhook_id)
    return deleted


def delete_subscription(client: AuthApiClient, webhook_id: str) -> None:
    """DELETE, where "already gone" counts as done: a retried delete whose first answer was lost finds nothing,
    and an account-wide hook is listed (and deleted) once per project."""
    try:
        client.delete_webhook(webhook_id)
    except AuthApiError as exc:
        if exc.status != 404:
            raise


# The ping: a marker sent through The Auth API, recorded by the receiver in Redis, looked up here.


def new_marker() -> str:
    return f"kt-{uuid.uuid4().hex}"


def ping_body(tenant: TenantSettings, marker: str, *, samples_field: bool = True) -> dict[str, Any]:
    """POST /webhooks/ping's DTO. The spec names the headers field `headers`, the samples `customHeaders`: send both,
    unless `samples_field` is False (a service that refuses properties outside TestWebhookDTO)."""
    headers = {"Content-Type": "application/json"}
    if tenant.token is not None:
        headers[TOKEN_HEADER] = tenant.token.reveal()
    return {
        "url": require_subscribable(tenant),
        "httpMethod": "POST",
        "body": {PING_FIELD: marker, "tenant": tenant.name},
        "headers": headers,
        **({"customHeaders": headers} if samples_field else {}),
    }


def send_ping(client: AuthApiClient, tenant: TenantSettings, marker: str) -> Any:
    """Ask The Auth API to send the ping; returns its answer (shape UNKNOWN, kept only for diagnosis)."""
    try:
        answer = client.ping_webhook(ping_body(tenant, marker))
    except AuthApiError as exc:
        # NestJS's forbidNonWhitelisted names the refused property; then the spec's DTO alone is what it accepts.
        if exc.status != 400 or "customHeaders" not in exc.message:
            raise
        answer = client.ping_webhook(ping_body(tenant, marker, samples_field=False))
    log.info("ping_sent", tenant=tenant.name, marker=marker)
    return answer


def wait_for_ping(
    store: redis.Redis, tenant: str, marker: str, timeout: float, *, poll_seconds: float = 0.05
) -> int | None:
    """Poll Redis until the receiver has recorded the marker; its epoch-ms receipt time, or None on timeout."""
    deadline = time.monotonic() + timeout
    key = ping_key(tenant, marker)
    while True:
        value = store.get(key)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


@dataclass(frozen=True, slots=True)
class PingResult:
    tenant: str
    marker: str
    seen: bool
    round_trip_ms: float | None
    cause: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "marker": self.marker,
            "seen": self.seen,
            "round_trip_ms": self.round_trip_ms,
            "cause": self.cause,
        }


def ping_round_trip(client: AuthApiClient, store: redis.Redis, tenant: TenantSettings, timeout: float) -> PingResult:
    """Send a ping through The Auth API and wait for the receiver to record it; diagnose when it never arrives."""
    marker = new_marker()
    started = time.monotonic()
    send_ping(client, tenant, marker)
    seen = wait_for_ping(store, tenant.name, marker, timeout)
    if seen is not None:
        elapsed = round((time.monotonic() - started) * 1000, 1)
        log.info("ping_seen", tenant=tenant.name, marker=marker, round_trip_ms=elapsed)
        return PingResult(tenant.name, marker, True, elapsed)
    cause = diagnose_ping(store, tenant, timeout)
    log.warning("ping_not_seen", tenant=tenant.name, marker=marker, cause=cause)
    return PingResult(tenant.name, marker, False, None, cause)


def diagnose_ping(store: redis.Redis, tenant: TenantSettings, waited: float, *, probe_timeout: float = 3.0) -> str:
    """Why a ping did not arrive, found by sending the same kind of ping straight to the receiver from here."""
    url = require_subscribable(tenant)
    prefix = f"ping not seen by the receiver within {waited:g}s"
    marker = new_marker()
    headers = {TOKEN_HEADER: tenant.token.reveal()} if tenant.token is not None else {}
    try:
        response = httpx.post(url, json={PING_FIELD: marker}, headers=headers, timeout=probe_timeout)
    except httpx.HTTPError as exc:
        return f"{prefix}: receiver down? {url} is unreachable from here too ({type(exc).__name__})"
    status = response.status_code
    if status in (401, 403):
        return (
            f"{prefix}: token mismatch: the receiver at {url} answered HTTP {status} to X-Keytrail-Token "
            f"(tenants.{tenant.name}.token differs from the receiver's)"
        )
    if status == 404:
        return f"{prefix}: the receiver at {url} answered 404 (unknown tenant {tenant.name}, or public_url is wrong)"
    if not response.is_success:
        return f"{prefix}: the receiver at {url} answered HTTP {status} to a ping sent from here"
    if wait_for_ping(store, tenant.name, marker, min(waited, 2.0)) is not None:
        return (
            f"{prefix}: public_url unreachable from The Auth API: the receiver records pings sent from here, "
            f"so {tenant.public_url} must be reachable from the internet (DNS, firewall, TLS certificate)"
        )
    return (
        f"{prefix}: the receiver at {url} answered {status} but did not record the ping in this Redis (another Redis?)"
    )


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def redacted_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
