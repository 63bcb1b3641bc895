"""Converging keytrail's subscriptions on the desired state: apply a plan, read back, repeat (bounded) until the
read finds what `keytrail subscribe --check` would call in sync, or fail with one line.

Answers are not trusted, because The Auth API may drop a PATCH's fields outside UpdateWebhookDTO and still answer
200, and an answer can be lost after the change was made (a 5xx, a dropped connection). So each round starts with a
fresh read, a create whose outcome is unknown is never repeated blindly (the next read finds it, and duplicates are
removed), and success is only ever a fresh read that matches.

A difference PATCH cannot repair (topics, status, httpMethod) replaces the subscription: the new one is created
before the old one is deleted, so the project is never without one. The overlap can deliver an event twice; the
receiver keys events, so that still makes one record. The other order would lose what happens in between.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from authapi.client import AuthApiClient, AuthApiError
from authapi.drift import drift_of
from authapi.subscriptions import (
    Action,
    BootstrapError,
    Change,
    Desired,
    Progress,
    Scope,
    delete_subscription,
    differences,
    plan_account_wide,
    plan_project,
)

log = structlog.get_logger(__name__)

# Rounds of read → apply per project. One is enough when answers are honest; each lost answer costs one more.
MAX_ROUNDS = 4


class OutcomeUnknown(Exception):
    """A change may or may not have been made; the round ends and the next read tells."""


def converge_tenant(client: AuthApiClient, scope: Scope, *, progress: Progress | None = None) -> list[Change]:
    """Make every project's subscription right, then remove keytrail's account-wide hooks; the changes made."""
    desireds = scope.desireds()
    made: list[Change] = []
    for desired in desireds:
        made += converge_project(client, desired)
        if progress is not None:
            progress(desired.project_id)
    for _ in range(MAX_ROUNDS):
        account_wide = plan_account_wide(client, desireds)
        if not account_wide:
            return made
        for change in account_wide:
            try:
                _apply(client, change)
            except OutcomeUnknown:
                continue
            made.append(change)
    raise BootstrapError(
        f"tenant {scope.tenant.name}: keytrail's account-wide subscription is still there after {MAX_ROUNDS} deletes"
    )


def converge_project(client: AuthApiClient, desired: Desired, *, max_rounds: int = MAX_ROUNDS) -> list[Change]:
    """Read, apply what differs, read again, until the project holds exactly keytrail's desired subscription.

    Returns the changes made (an `unchanged` row when there was nothing to do); raises `BootstrapError` with one
    line when The Auth API does not keep what it is sent.
    """
    made: list[Change] = []
    for round_number in range(max_rounds):
        plan = plan_project(client, desired)
        if all(change.action is Action.UNCHANGED for change in plan):
            return _finish(made or plan, plan)
        try:
            for change in plan:
                if change.action is Action.UNCHANGED:
                    if round_number == 0:
                        made.append(change)
                    continue
                made.append(_apply(client, change))
        except OutcomeUnknown as exc:
            made.append(exc.args[0])
    plan = plan_project(client, desired)
    if all(change.action is Action.UNCHANGED for change in plan):
        return _finish(made, plan)
    problems = "; ".join(p for change in plan if (drift := drift_of(change)) for p in drift.problems)
    raise BootstrapError(
        f"tenant {desired.tenant}: project {desired.project_id}: keytrail's subscription still differs after "
        f"{max_rounds} rounds of repair ({problems}): The Auth API does not keep what it is sent"
    )


def _finish(made: list[Change], final: Sequence[Change]) -> list[Change]:
    # A create whose answer was lost has no id of its own; the read that proved it names it.
    keeper = next((c.webhook_id for c in final if c.action is Action.UNCHANGED), None)
    return [
        dataclasses.replace(c, webhook_id=keeper) if c.action is Action.CREATE and c.webhook_id is None else c
        for c in made
    ]


def _apply(client: AuthApiClient, change: Change) -> Change:
    """Make one change; the change as made (an update PATCH could not do becomes a replace)."""
    try:
        return _make(client, change)
    except AuthApiError as exc:
        if not exc.outcome_unknown:
            raise
        log.warning(
            "subscription_change_unconfirmed",
            tenant=change.tenant,
            project_id=change.project_id,
            action=str(change.action),
            error=str(exc),
        )
        raise OutcomeUnknown(change) from None


def _make(client: AuthApiClient, change: Change) -> Change:
    context = {"tenant": change.tenant, "project_id": change.project_id}
    if change.action is Action.CREATE:
        webhook_id = _create(client, change.desired)
        log.info("subscription_created", **context, webhook_id=webhook_id)
        return dataclasses.replace(change, webhook_id=webhook_id)
    webhook_id = change.webhook_id
    assert webhook_id is not None
    if change.action is Action.UPDATE:
        client.update_webhook(webhook_id, change.desired.update_body())
        left = differences(change.desired, _read(client, webhook_id))
        log.info("subscription_updated", **context, webhook_id=webhook_id, fields=list(change.differences))
        if not left:
            return change
        # The PATCH answered 2xx but did not take (a service that drops fields it does not document).
        log.warning("subscription_update_ignored", **context, webhook_id=webhook_id, fields=list(left))
        change = dataclasses.replace(change, action=Action.REPLACE, differences=left)
    if change.action is Action.REPLACE:
        return _replace(client, change)
    delete_subscription(client, webhook_id)
    log.info("subscription_deleted", **context, webhook_id=webhook_id, reason=str(change.action))
    return change


def _replace(client: AuthApiClient, change: Change) -> Change:
    old_id = change.webhook_id
    assert old_id is not None
    desired = change.desired
    new_id = _create(client, desired)
    if new_id is not None:
        left = differences(desired, _read(client, new_id))
        if left:
            # Even a fresh subscription comes back wrong: no request can make it right. Undo ours, keep theirs.
            delete_subscription(client, new_id)
            raise BootstrapError(
                f"tenant {desired.tenant}: project {desired.project_id}: The Auth API does not keep "
                f"{', '.join(left)} of keytrail's subscription, not even on a new one; left as it was"
            )
    delete_subscription(client, old_id)
    log.info(
        "subscription_replaced",
        tenant=desired.tenant,
        project_id=desired.project_id,
        old_webhook_id=old_id,
        webhook_id=new_id,
        fields=list(change.differences),
    )
    return dataclasses.replace(change, action=Action.REPLACE, webhook_id=new_id)


def _create(client: AuthApiClient, desired: Desired) -> str | None:
    created = client.create_webhook(desired.create_body())
    return str(created["id"]) if isinstance(created, Mapping) and "id" in created else None


def _read(client: AuthApiClient, webhook_id: str) -> Mapping[str, Any]:
    found = client.get_webhook(webhook_id)
    return found if isinstance(found, Mapping) else {}
