"""Drift: how keytrail's live subscriptions differ from the desired ones, read without changing anything.

`check_tenant` backs `keytrail subscribe --check`; `check_drift_all` is the scheduled job's check of every tenant.
Drift is what the plan would do, said as problems: a create means the subscription is missing, an update or a
replace names the fields that changed, a delete names a duplicate or an account-wide hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from authapi.client import AuthApiClient, AuthApiError
from authapi.subscriptions import Action, BootstrapError, Change, Progress, Scope, plan_tenant
from config.settings import Settings

log = structlog.get_logger(__name__)


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


def check_tenant(client: AuthApiClient, scope: Scope, *, progress: Progress | None = None) -> list[Drift]:
    plan = plan_tenant(client, scope, progress=progress)
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
                found = check_tenant(client, Scope.of(client, tenant))
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
