"""keytrail's subscriptions at The Auth API: the desired state, how the live one differs, and the plan between them.

A tenant's desired state is one subscription per project, found by its URL (`{public_url}/hooks/theauthapi/{tenant}`):
topics, `httpMethod` POST, `customHeaders` carrying `X-Keytrail-Token`, `status` live. `Scope.of` reads what it is
made from (topics, projects), `plan_tenant` compares it with what the API holds, `authapi.convergence` makes it so,
`authapi.drift` reports what differs without changing anything, and `authapi.ping` proves the path.

Requests carry only the fields of the spec's DTO for that request (`CREATE_FIELDS`, `UPDATE_FIELDS`): a NestJS
service may drop or refuse anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from authapi.client import AuthApiClient, AuthApiError
from config.settings import DEFAULT_TOPICS, Secret, TenantSettings
from events.wire import SUBSCRIPTION_TOKEN_HEADER, hook_url

log = structlog.get_logger(__name__)

# Called with each project id once its subscription is done (a progress bar advances).
Progress = Callable[[str], None]

SUBSCRIPTION_NAME = "keytrail"
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


def token_header(token: Secret | None) -> dict[str, str]:
    """The header that makes the receiver take a request as the tenant's, revealed for sending (none without one)."""
    return {SUBSCRIPTION_TOKEN_HEADER: token.reveal()} if token is not None else {}


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
        return token_header(self.token)

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
class Removal:
    """One of keytrail's subscriptions that `unsubscribe` deleted (or would delete)."""

    tenant: str
    project_id: str
    webhook_id: str


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


@dataclass(frozen=True, slots=True)
class Scope:
    """What one tenant's subscriptions cover: the topics they carry and the projects they are in."""

    tenant: TenantSettings
    topics: Topics
    projects: tuple[str, ...]

    @classmethod
    def of(cls, client: AuthApiClient, tenant: TenantSettings, chosen: Sequence[str] | None = None) -> Scope:
        """`chosen` topics (else the API's, else the known ones) in the configured projects (else the account's)."""
        return cls(tenant, fetch_topics(client, chosen), tenant_projects(client, tenant))

    def desireds(self) -> list[Desired]:
        return [desired_for(self.tenant, project_id, self.topics.names) for project_id in self.projects]


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


def plan_tenant(client: AuthApiClient, scope: Scope, *, progress: Progress | None = None) -> list[Change]:
    """Every change that would make the scope's projects hold exactly keytrail's subscription; none is made."""
    changes: list[Change] = []
    desireds = scope.desireds()
    for desired in desireds:
        changes += plan_project(client, desired)
        if progress is not None:
            progress(desired.project_id)
    return changes + plan_account_wide(client, desireds)


def unsubscribe_tenant(client: AuthApiClient, tenant: TenantSettings, *, dry_run: bool = False) -> list[Removal]:
    """Delete keytrail's subscriptions (by URL) in every project of the tenant; what was (or would be) deleted."""
    removed: list[Removal] = []
    for project_id in tenant_projects(client, tenant):
        desired = desired_for(tenant, project_id, DEFAULT_TOPICS)
        removed += [Removal(tenant.name, project_id, w) for w in unsubscribe_project(client, desired, dry_run=dry_run)]
    return removed


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
