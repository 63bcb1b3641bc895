"""The `webhook` sink: each record POSTed to a CRM's inbound URL as JSON signed per Standard Webhooks v1.

One request per record. The body is the envelope Standard Webhooks recommends, so PLG tools can route on `type`:

    {"type": "<topic>", "timestamp": "<record time>", "data": {<the whole audit record>}}

Headers: `webhook-id` = the record's event_id (the receiver's idempotency key, the same on every retry),
`webhook-timestamp` = unix seconds of this attempt, `webhook-signature` = `v1,` + base64 HMAC-SHA256 over
`{id}.{timestamp}.{body}` keyed with the base64-decoded secret after `whsec_`.

Classification (`classify`): 2xx delivered; 410 -> SinkDisabled (the endpoint asked us to stop); 408/429/502/503/504
-> SinkUnavailable honouring Retry-After; 3xx -> SinkUnavailable with an alert (redirects are not followed: fix the
URL); other 4xx -> SinkRejected with the status and a short body excerpt (dead letter); other 5xx and network errors
-> SinkUnavailable. The URL may carry a token, so it is read as a secret and never appears in a reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Self

import httpx

from config.errors import ConfigError
from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from events.version import VERSION
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkDisabled, SinkError, SinkRejected, SinkUnavailable
from sinks.http import parse_retry_after
from sinks.options import Options

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
# Retry-After larger than this is read as this: a peer cannot park our records for weeks.
_EXCERPT = 200


def render_body(record: AuditRecord) -> bytes:
    envelope = {"type": record.topic, "timestamp": record.time, "data": record.to_dict()}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def decode_secret(secret: str) -> bytes:
    """The signing key: base64 after the optional `whsec_` prefix (padding optional, as the reference library)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not base64 after whsec_") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def render_headers(record: AuditRecord, body: bytes, key: bytes, timestamp: int) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": f"keytrail/{_version()}",
        "webhook-id": record.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, record.event_id, timestamp, body),
    }


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """`Retry-After` as seconds from `now` (unix time); see sinks.http."""
    return parse_retry_after(value, now=now)


def excerpt(text: str, limit: int = _EXCERPT) -> str:
    """A short, single-line piece of a response body for a reason text."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text[: limit * 4]).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def classify(result: httpx.Response | httpx.HTTPError, *, now: float | None = None) -> SinkError | None:
    """None when delivered; otherwise the error that says what to do with the record (see the module docstring)."""
    if isinstance(result, httpx.HTTPError):
        return network_error(result)
    status = result.status_code
    if 200 <= status < 300:
        return None
    body = excerpt(result.text)
    detail = f"HTTP {status}: {body}" if body else f"HTTP {status}"
    retry_after = retry_after_seconds(result.headers.get("retry-after"), now=time.time() if now is None else now)
    error: SinkError
    if status == 410:
        error = SinkDisabled(f"{detail} (the endpoint is gone; sink disabled until re-enabled)")
    elif status in (408, 429, 502, 503, 504):
        error = SinkUnavailable(detail, retry_after=retry_after)
    elif 300 <= status < 400:
        error = SinkUnavailable(f"HTTP {status}: redirects are not followed; fix the URL", alert=True)
    elif 400 <= status < 500:
        error = SinkRejected(detail)
    else:
        error = SinkUnavailable(detail, retry_after=retry_after)
    return error


def network_error(exc: httpx.HTTPError) -> SinkUnavailable:
    """The class name only: httpx messages can quote the URL, which may hold a token."""
    if isinstance(exc, httpx.TimeoutException):
        return SinkUnavailable(f"timed out ({type(exc).__name__})")
    return SinkUnavailable(f"network error ({type(exc).__name__})")


def post_each(
    records: Sequence[AuditRecord],
    post: Callable[[AuditRecord], SinkError | None],
    *,
    rejects_rest: type[SinkRejected] | None = None,
) -> DeliveryReport:
    """Send records one by one. A rejected record is dead-lettered and the rest go on (unless the rejection is a
    `rejects_rest`, which says every later record would meet it too). The first "retry later" or "disabled" stops
    the batch: raised when it is the first record (the whole batch shares it), else the rest are reported RETRY and
    the next attempt meets the error first."""
    report = DeliveryReport()
    for index, record in enumerate(records):
        error = post(record)
        if error is None:
            report.set(record.record_id, Outcome.DELIVERED)
        elif rejects_rest is not None and isinstance(error, rejects_rest):
            for rest in records[index:]:
                report.set(rest.record_id, Outcome.REJECTED, error.reason)
            break
        elif isinstance(error, SinkRejected):
            report.set(record.record_id, Outcome.REJECTED, error.reason)
        elif index == 0:
            raise error
        else:
            for rest in records[index:]:
                report.set(rest.record_id, Outcome.RETRY, error.reason)
            if isinstance(error, SinkUnavailable) and error.retry_after is not None:
                report.retry_after = error.retry_after
            break
    return report


class WebhookSink:
    """Options: `url` (required; a secret, since inbound URLs often embed a token), `secret` (required, `whsec_…`),
    `timeout` (15 s)."""

    def __init__(
        self,
        name: str,
        url: Secret,
        secret: Secret,
        *,
        timeout: float = 15.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._url = url
        decode_secret(secret.reveal())  # a bad secret fails here, at build time, not at the first delivery
        # Kept as a Secret and decoded per request, so no attribute holds the signing key in clear.
        self._secret = secret
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        url = opts.secret("url")
        secret = opts.secret("secret")
        timeout = opts.number("timeout", 15.0, minimum=0.1)
        where = f"sinks.{settings.name}"
        if url is not None and not url.reveal().startswith(("https://", "http://")):
            opts.problems.append(f"{where}.url: must start with https:// (or http://)")
        if secret is not None:
            try:
                decode_secret(secret.reveal())
            except ValueError as exc:
                opts.problems.append(f"{where}.secret: {exc} (expected whsec_ + base64 of 24-64 random bytes)")
        opts.finish()
        if url is None or secret is None:  # finish() has raised already; this narrows the types
            raise ConfigError([f"{where}: url and secret are required"])
        return cls(settings.name, url, secret, timeout=timeout)

    def _post(self, record: AuditRecord) -> SinkError | None:
        body = render_body(record)
        headers = render_headers(record, body, decode_secret(self._secret.reveal()), int(self._clock()))
        try:
            response = self._client.post(self._url.reveal(), content=body, headers=headers)
        except httpx.HTTPError as exc:
            return network_error(exc)
        return classify(response, now=self._clock())

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        with self._lock:
            return post_each(records, self._post)

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={self._url!r}, secret={self._secret!r})"

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _version() -> str:
    return VERSION
