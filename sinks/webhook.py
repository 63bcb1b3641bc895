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
from sinks import http
from sinks.base import DeliveryReport
from sinks.errors import SinkDisabled, SinkError
from sinks.options import Options

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


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
        "user-agent": http.USER_AGENT,
        "webhook-id": record.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, record.event_id, timestamp, body),
    }


def classify(result: httpx.Response | httpx.HTTPError, *, now: float | None = None) -> SinkError | None:
    """None when delivered; otherwise the error that says what to do with the record (see the module docstring)."""
    if isinstance(result, httpx.HTTPError):
        return http.transport_error(result)
    answer = http.read_answer(result, now=now)
    if answer.status == 410:
        return SinkDisabled(f"{answer.detail} (the endpoint is gone; sink disabled until re-enabled)")
    return http.status_error(answer)


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
        self._client = client or http.build_client(timeout)
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
        return http.post(
            self._client,
            self._url.reveal(),
            lambda response: classify(response, now=self._clock()),
            content=body,
            headers=headers,
        )

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        with self._lock:
            return http.post_each(records, self._post)

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={self._url!r}, secret={self._secret!r})"

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
