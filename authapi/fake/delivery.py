"""The fake's webhook deliverer: the events it sends, signed, retried, duplicated or reordered, on one thread."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from authapi.fake.entities import Json, timestamp
from events.wire import SIGNATURE_HEADER


@dataclass(frozen=True, slots=True)
class Event:
    """One webhook event; `id` is the GUID a receiver deduplicates on, the same on every redelivery."""

    topic: str
    project_id: str | None
    account_id: str | None
    data: Json
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=timestamp)

    def envelope(self) -> Json:
        return {
            "id": self.id,
            "topic": self.topic,
            "createdAt": self.created_at,
            "projectId": self.project_id,
            "accountId": self.account_id,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Target:
    webhook_id: str
    url: str
    method: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    targets: tuple[Target, ...]
    copies: int


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One HTTP attempt to deliver one event to one subscription; `status` is None when the request failed."""

    event_id: str
    topic: str
    webhook_id: str
    url: str
    attempt: int
    status: int | None
    error: str | None = None


def signed_headers(hook: Mapping[str, Any], secret: str) -> dict[str, str]:
    """A subscription's custom headers, then its signing secret in `theauthapi-signature`."""
    headers = {"content-type": "application/json", "user-agent": "theauthapi-fake-webhooks/1"}
    headers.update(hook.get("customHeaders") or {})
    headers[SIGNATURE_HEADER] = secret
    return headers


class Deliverer:
    """Sends queued events to their subscriptions from one thread, and logs every attempt in `attempts`.

    Switches: `duplicates_every` (deliver every Nth event twice; 0 never), `out_of_order` (deliver events in swapped
    pairs), `bare_entity` (the body is just the entity); each target gets up to `max_attempts` tries with exponential
    backoff. It shares the state's lock, which `emit` is called under.
    """

    def __init__(
        self,
        lock: threading.RLock,
        *,
        duplicates_every: int,
        out_of_order: bool,
        bare_entity: bool,
        max_attempts: int,
        backoff_seconds: float,
        timeout_seconds: float,
        out_of_order_hold_seconds: float,
    ) -> None:
        self.duplicates_every = duplicates_every
        self.out_of_order = out_of_order
        self.bare_entity = bare_entity
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.out_of_order_hold_seconds = out_of_order_hold_seconds
        self.attempts: list[DeliveryAttempt] = []
        self._events_emitted = 0
        self._lock = lock
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._queue: queue.Queue[Delivery | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None

    def emit(
        self,
        topic: str,
        project_id: str | None,
        account_id: str | None,
        entity: Mapping[str, Any],
        hooks: Iterable[tuple[Mapping[str, Any], str]],
    ) -> None:
        """Queue one event for `hooks`, each with its signing secret; nothing when there are none."""
        targets = tuple(
            Target(hook["id"], hook["url"], hook["httpMethod"], signed_headers(hook, secret)) for hook, secret in hooks
        )
        if not targets:
            return
        self._events_emitted += 1
        every = self.duplicates_every
        copies = 2 if every > 0 and self._events_emitted % every == 0 else 1
        delivery = Delivery(Event(topic, project_id, account_id, dict(entity)), targets, copies)
        self._in_flight += 1
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            self._in_flight -= 1

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every emitted event has been delivered or given up on; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_loop, name="fake-authapi-deliveries", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _deliver_loop(self) -> None:
        held: Delivery | None = None
        held_until = 0.0
        with httpx.Client(timeout=self.timeout_seconds) as http:
            while True:
                try:
                    timeout = max(0.0, held_until - time.monotonic()) if held else None
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item, held = held, None
                    if item is not None:
                        self._send(http, item)
                    continue
                if item is None:
                    if held is not None:
                        self._send(http, held)
                    return
                if not self.out_of_order:
                    self._send(http, item)
                elif held is None:
                    held, held_until = item, time.monotonic() + self.out_of_order_hold_seconds
                else:
                    # The later event overtakes the earlier one, as the real service allows.
                    self._send(http, item)
                    self._send(http, held)
                    held = None

    def _send(self, http: httpx.Client, delivery: Delivery) -> None:
        event = delivery.event
        body = event.data if self.bare_entity else event.envelope()
        try:
            for target in delivery.targets:
                for _ in range(delivery.copies):
                    self._send_one(http, event, target, body)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _send_one(self, http: httpx.Client, event: Event, target: Target, body: Json) -> None:
        for attempt in range(1, self.max_attempts + 1):
            status: int | None = None
            error: str | None = None
            try:
                status = http.request(target.method, target.url, json=body, headers=dict(target.headers)).status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            with self._lock:
                self.attempts.append(
                    DeliveryAttempt(event.id, event.topic, target.webhook_id, target.url, attempt, status, error)
                )
            if status is not None and 200 <= status < 300:
                return
            if attempt < self.max_attempts:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
