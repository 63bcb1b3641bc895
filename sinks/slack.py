"""The `slack` sink: records as Block Kit messages to a Slack incoming webhook, paced and escaped.

One message per record; a batch of more than `summary_threshold` records becomes one summary message instead (a burst
of key rotations should not flood a channel or trip the rate limit). Messages to one webhook are spaced at least
`min_interval` seconds apart (Slack allows about one per second and may disable a webhook that keeps exceeding it).
Given Redis (`use_redis`, called by the worker runtime) the pacing is one token bucket per webhook shared by every
worker process (`sinks.pacing`), so N workers together still post one message per `min_interval`, and a 429's
Retry-After pauses all of them; without Redis (or with `shared_pacing = false`) each process paces itself. A send
waits for its turn at most `max_wait` seconds, then hands the rest back as retry-later with the wait as Retry-After.

Every text that comes from a record is escaped (`&` `<` `>`), so a key named `<!channel>` or `<@U123>` shows as text
and cannot notify anyone. Only fingerprints and `prefix…last4` are shown, never a key.

Classification (`classify`): 2xx `ok` delivered; 429 -> SinkUnavailable with Retry-After; 408 / 5xx / network ->
SinkUnavailable; other 4xx and Slack's error texts -> SinkRejected with the text (dead letter). When the error says
the webhook itself is unusable (403, 404, 410: revoked, archived channel, disabled team…) the rest of the batch is
rejected with it rather than posted into the same wall. Slack webhooks have no idempotency key: a timeout after Slack
accepted a message leads to a duplicate post on retry.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Self

import httpx
from redis import Redis

from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from sinks import http
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkError, SinkRejected, SinkUnavailable
from sinks.options import Options
from sinks.pacing import Bucket, LocalBucket, RedisBucket, acquire, bucket_key

Block = dict[str, Any]

# Error texts Slack answers with (https://api.slack.com/messaging/webhooks, changelog 2016-05-17).
PAYLOAD_ERRORS = frozenset(
    {
        "invalid_payload",
        "user_not_found",
        "no_text",
        "missing_text_or_fallback_or_attachments",
        "invalid_blocks",
        "invalid_blocks_format",
        "too_many_attachments",
        "msg_blocks_too_long",
    }
)
WEBHOOK_ERRORS = frozenset(
    {
        "action_prohibited",
        "invalid_token",
        "team_disabled",
        "posting_to_general_channel_denied",
        "channel_not_found",
        "channel_is_archived",
        "no_service",
        "no_service_id",
        "no_team",
        "no_active_hooks",
    }
)

_VALUE_LIMIT = 200  # per field; Block Kit allows 2000, but a key name or actor never needs more
_EVENT_IDS_BUDGET = 2500  # the summary's list of event ids (context text limit 3000)
_SUMMARY_TOPICS = 10  # section fields allow at most 10


class WebhookRevoked(SinkRejected):
    """A rejection that applies to the webhook, not to one message: every later record would meet it too."""


def escape(text: str) -> str:
    """Slack's three control characters; this is what stops `<!here>`, `<@U…>` and `<http://…|link>` injection."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _value(text: str | None) -> str:
    if not text:
        return "—"
    short = text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"
    return escape(short)


def _mrkdwn(text: str) -> Block:
    return {"type": "mrkdwn", "text": text}


def render_message(record: AuditRecord) -> dict[str, Any]:
    """One record as a Block Kit message (with a plain `text` fallback for notifications)."""
    entity = record.entity
    key_hint = f"{entity.prefix or ''}…{entity.last4 or ''}" if entity.prefix or entity.last4 else None
    title = f"*{_value(record.topic)}* in tenant *{_value(record.tenant)}*"
    fields = [
        f"*Entity*\n{_value(str(entity.type))}: {_value(entity.name)}",
        f"*Fingerprint*\n{_value(entity.fingerprint)}",
        f"*Key*\n{_value(key_hint)}",
        f"*Time*\n{_value(record.time)}",
        f"*Actor*\n{_value(record.actor.uid if record.actor else None)}",
        f"*Project*\n{_value(record.project_id)}",
    ]
    return {
        "text": f"{_value(record.topic)} in {_value(record.tenant)}: {_value(str(entity.type))} {_value(entity.name)}",
        "blocks": [
            {"type": "section", "text": _mrkdwn(title)},
            {"type": "section", "fields": [_mrkdwn(field) for field in fields]},
            {"type": "context", "elements": [_mrkdwn(f"event_id {_value(record.event_id)} · keytrail")]},
        ],
        "unfurl_links": False,
        "unfurl_media": False,
    }


def render_summary(records: Sequence[AuditRecord]) -> dict[str, Any]:
    """One message for a large batch: counts per topic, tenants, time range and as many event ids as fit."""
    topics = Counter(record.topic for record in records).most_common()
    if len(topics) > _SUMMARY_TOPICS:
        others = sum(count for _, count in topics[_SUMMARY_TOPICS - 1 :])
        topics = [*topics[: _SUMMARY_TOPICS - 1], ("other topics", others)]
    tenants = sorted({record.tenant for record in records})
    times = sorted(record.time for record in records)
    ids: list[str] = []
    used = 0
    for record in records:
        piece = _value(record.event_id)
        if used + len(piece) + 2 > _EVENT_IDS_BUDGET:
            break
        ids.append(piece)
        used += len(piece) + 2
    more = f" (+{len(records) - len(ids)} more)" if len(ids) < len(records) else ""
    tenant_list = ", ".join(_value(tenant) for tenant in tenants[:20]) + (" …" if len(tenants) > 20 else "")
    headline = f"*{len(records)} key-lifecycle events* from {_value(times[0])} to {_value(times[-1])}"
    return {
        "text": f"{len(records)} key-lifecycle events in {tenant_list}",
        "blocks": [
            {"type": "section", "text": _mrkdwn(headline)},
            {"type": "section", "fields": [_mrkdwn(f"*{_value(topic)}*\n{count}") for topic, count in topics]},
            {"type": "section", "text": _mrkdwn(f"*Tenants:* {tenant_list}")},
            {"type": "context", "elements": [_mrkdwn(f"event_ids: {', '.join(ids)}{more}")]},
        ],
        "unfurl_links": False,
        "unfurl_media": False,
    }


def classify(result: httpx.Response | httpx.HTTPError, *, now: float | None = None) -> SinkError | None:
    """None when Slack took the message; otherwise what to do with it (see the module docstring)."""
    if isinstance(result, httpx.HTTPError):
        return http.transport_error(result)
    answer = http.read_answer(result, label="Slack HTTP", limit=100, now=now)
    # Slack itself answers 200 "ok" or an error status; an error text with a 2xx comes from older or compatible
    # services, and is read by its text.
    if not answer.retryable and (answer.status in (403, 404, 410) or answer.text in WEBHOOK_ERRORS):
        return WebhookRevoked(answer.detail)
    if 200 <= answer.status < 300 and answer.text in PAYLOAD_ERRORS:
        return SinkRejected(answer.detail)
    return http.status_error(answer, redirect_hint="check the webhook URL")


class SlackSink:
    """Options: `webhook_url` (required, a secret), `summary_threshold` (10), `min_interval` (1.0 s), `burst` (1),
    `max_wait` (30 s), `shared_pacing` (true), `timeout` (10 s)."""

    def __init__(
        self,
        name: str,
        webhook_url: Secret,
        *,
        summary_threshold: int = 10,
        min_interval: float = 1.0,
        burst: int = 1,
        max_wait: float = 30.0,
        shared_pacing: bool = True,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._url = webhook_url
        self.summary_threshold = summary_threshold
        self.min_interval = min_interval
        self.burst = burst
        self.max_wait = max_wait
        self.shared_pacing = shared_pacing
        self._bucket: Bucket | None = LocalBucket(min_interval, burst, clock=clock) if min_interval > 0 else None
        self._deadline = 0.0
        self._owns_client = client is None
        self._client = client or http.build_client(timeout)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        url = opts.secret("webhook_url")
        summary_threshold = opts.integer("summary_threshold", 10, minimum=1)
        min_interval = opts.number("min_interval", 1.0, minimum=0.0)
        burst = opts.integer("burst", 1, minimum=1, maximum=100)
        max_wait = opts.number("max_wait", 30.0, minimum=0.0)
        shared_pacing = opts.boolean("shared_pacing", True)
        timeout = opts.number("timeout", 10.0, minimum=0.1)
        if url is not None and not url.reveal().startswith("https://"):
            opts.problems.append(f"sinks.{settings.name}.webhook_url: must start with https://")
        opts.finish()
        return cls(
            settings.name,
            url or Secret(""),
            summary_threshold=summary_threshold,
            min_interval=min_interval,
            burst=burst,
            max_wait=max_wait,
            shared_pacing=shared_pacing,
            timeout=timeout,
        )

    def use_redis(self, redis: Redis) -> None:
        """Pace through one bucket per webhook in this Redis, shared with every process posting to it (the key is
        a hash of the URL). Called by the worker runtime; a no-op with `shared_pacing = false` or no pacing."""
        if self.shared_pacing and self.min_interval > 0:
            key = bucket_key("slack", self._url.reveal())
            self._bucket = RedisBucket(redis, key, self.min_interval, self.burst)

    def _post(self, payload: dict[str, Any]) -> SinkError | None:
        if self._bucket is not None:
            try:
                acquire(self._bucket, deadline=self._deadline, clock=self._clock, sleep=self._sleep, label="Slack")
            except SinkUnavailable as exc:
                return exc
        error = http.post(self._client, self._url.reveal(), classify, json=payload)
        if self._bucket is not None and isinstance(error, SinkUnavailable) and error.retry_after:
            # Redis failing here changes nothing: the peer's error is what this send reports, and the job's backoff
            # still honours its wait.
            with contextlib.suppress(SinkUnavailable):
                self._bucket.pause(error.retry_after)
        return error

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        if not records:
            return DeliveryReport()
        with self._lock:
            self._deadline = self._clock() + self.max_wait
            if len(records) > self.summary_threshold:
                return self._send_summary(records)
            return self._send_each(records)

    def _send_summary(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        error = self._post(render_summary(records))
        if error is not None:
            raise error
        return DeliveryReport.all(records, Outcome.DELIVERED)

    def __repr__(self) -> str:
        return f"SlackSink(name={self.name!r}, webhook_url={self._url!r})"

    def _send_each(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        return http.post_each(records, lambda record: self._post(render_message(record)), rejects_rest=WebhookRevoked)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
