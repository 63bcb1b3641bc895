"""The `webhook` sink: each record POSTed to a CRM's inbound URL as JSON, signed per Standard Webhooks v1 and/or
authenticated the way the CRM asks (bearer, basic, OAuth 2.0 client credentials: `sinks.webhook_auth`).

One request per record. The body is the envelope Standard Webhooks recommends, so PLG tools can route on `type`:

    {"type": "<topic>", "timestamp": "<record time>", "data": {<the whole audit record>}}

unless a body template matches the topic (`sinks.templates`): then the CRM's own shape, filled from the record.

Headers: `webhook-id` = the record's event_id (the receiver's idempotency key, the same on every retry),
`webhook-timestamp` = unix seconds of this attempt, `webhook-signature` = `v1,` + base64 HMAC-SHA256 over
`{id}.{timestamp}.{body}` keyed with the base64-decoded secret after `whsec_` (when a `secret` is set: required
with `auth = "none"`, optional otherwise), `authorization` per `auth`, then the `headers` table.

With OAuth 2.0, a 401 from the endpoint drops the cached token; a new one is fetched and the record sent once more.
With any `auth`, a 401 that remains is SinkUnavailable with an alert (the credentials need fixing; records are
held), not a dead letter: the record is fine, the key is not.

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
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Self

import httpx

from config.errors import ConfigError
from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from sinks import http
from sinks.base import DeliveryReport
from sinks.errors import SinkDisabled, SinkError, SinkUnavailable
from sinks.options import Options
from sinks.templates import BodyTemplate, parse_template, select
from sinks.webhook_auth import Credentials, NoCredentials, credentials_from_options

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
# Headers the sink sets itself; the `headers` table may not replace them (authorization: use `auth`).
OWN_HEADERS = frozenset(
    {"content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def render_body(record: AuditRecord, templates: Sequence[BodyTemplate] = ()) -> bytes:
    template = select(tuple(templates), record.topic)
    if template is not None:
        return template.render(record)
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


def render_headers(record: AuditRecord, body: bytes, key: bytes | None, timestamp: int) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": http.USER_AGENT,
        "webhook-id": record.event_id,
        "webhook-timestamp": str(timestamp),
    }
    if key is not None:
        headers["webhook-signature"] = sign(key, record.event_id, timestamp, body)
    return headers


def classify(result: httpx.Response | httpx.HTTPError, *, now: float | None = None) -> SinkError | None:
    """None when delivered; otherwise the error that says what to do with the record (see the module docstring)."""
    if isinstance(result, httpx.HTTPError):
        return http.transport_error(result)
    answer = http.read_answer(result, now=now)
    if answer.status == 410:
        return SinkDisabled(f"{answer.detail} (the endpoint is gone; sink disabled until re-enabled)")
    return http.status_error(answer)


class WebhookSink:
    """Options: `url` (required; a secret, since inbound URLs often embed a token), `secret` (`whsec_…`; required
    unless `auth` is set), `auth` and its options (see `sinks.webhook_auth`), `headers` (a table; values may be
    `env:`/`file:` secrets), `templates` (topic or glob -> JSON body template), `timeout` (15 s)."""

    def __init__(
        self,
        name: str,
        url: Secret,
        secret: Secret | None,
        *,
        credentials: Credentials | None = None,
        headers: Mapping[str, Secret] | None = None,
        templates: Sequence[BodyTemplate] = (),
        timeout: float = 15.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._url = url
        if secret is not None:
            decode_secret(secret.reveal())  # a bad secret fails here, at build time, not at the first delivery
        # Kept as a Secret and decoded per request, so no attribute holds the signing key in clear.
        self._secret = secret
        self._credentials: Credentials = credentials or NoCredentials()
        self._headers = dict(headers or {})
        self._templates = tuple(templates)
        self._owns_client = client is None
        self._client = client or http.build_client(timeout)
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        where = f"sinks.{settings.name}"
        url = opts.secret("url")
        credentials = credentials_from_options(opts)
        secret = opts.secret("secret", required=settings.options.get("auth", "none") == "none")
        timeout = opts.number("timeout", 15.0, minimum=0.1)
        if url is not None and not url.reveal().startswith(("https://", "http://")):
            opts.problems.append(f"{where}.url: must start with https:// (or http://)")
        if secret is not None:
            try:
                decode_secret(secret.reveal())
            except ValueError as exc:
                opts.problems.append(f"{where}.secret: {exc} (expected whsec_ + base64 of 24-64 random bytes)")
        headers = _headers(opts.table("headers"), f"{where}.headers", opts.problems)
        templates: list[BodyTemplate] = []
        for pattern, raw in opts.table("templates").items():
            try:
                templates.append(parse_template(pattern, raw))
            except ValueError as exc:
                opts.problems.append(f"{where}.templates.{pattern}: {exc}")
        opts.finish()
        if url is None:  # finish() has raised already; this narrows the type
            raise ConfigError([f"{where}: url is required"])
        return cls(
            settings.name, url, secret, credentials=credentials, headers=headers, templates=templates, timeout=timeout
        )

    def _request_headers(self, record: AuditRecord, body: bytes) -> dict[str, str]:
        key = decode_secret(self._secret.reveal()) if self._secret is not None else None
        headers = render_headers(record, body, key, int(self._clock()))
        authorization = self._credentials.authorization(self._client)  # may raise SinkUnavailable
        if authorization is not None:
            headers["authorization"] = authorization
        headers |= {name: value.reveal() for name, value in self._headers.items()}
        return headers

    def _post(self, record: AuditRecord) -> SinkError | None:
        body = render_body(record, self._templates)
        refreshed = False
        while True:
            try:
                headers = self._request_headers(record, body)
                response = self._client.post(self._url.reveal(), content=body, headers=headers)
            except SinkUnavailable as exc:
                return exc
            except httpx.HTTPError as exc:
                return http.transport_error(exc)
            if response.status_code == 401 and self._credentials.refreshable and not refreshed:
                self._credentials.invalidate()  # the token expired or was revoked early: fetch one, send once more
                refreshed = True
                continue
            if response.status_code == 401 and not isinstance(self._credentials, NoCredentials):
                answer = http.read_answer(response, now=self._clock())
                return SinkUnavailable(f"{answer.detail} (credentials refused; records are held)", alert=True)
            return classify(response, now=self._clock())

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        with self._lock:
            return http.post_each(records, self._post)

    def __repr__(self) -> str:
        return (
            f"WebhookSink(name={self.name!r}, url={self._url!r}, secret={self._secret!r}, "
            f"credentials={self._credentials!r}, headers={sorted(self._headers)!r})"
        )

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _headers(table: Mapping[str, object], where: str, problems: list[str]) -> dict[str, Secret]:
    """The `headers` table as Secrets (a header is often an API key); names checked, the sink's own refused."""
    headers: dict[str, Secret] = {}
    for name, value in table.items():
        lowered = name.lower()
        if not HEADER_NAME.match(name):
            problems.append(f"{where}.{name}: not a valid HTTP header name")
        elif lowered in OWN_HEADERS or lowered == "authorization":
            what = "set auth instead" if lowered == "authorization" else "the sink sets it"
            problems.append(f"{where}.{name}: cannot be set here ({what})")
        elif isinstance(value, Secret):
            headers[lowered] = value
        elif isinstance(value, str) and value and "\n" not in value and "\r" not in value:
            headers[lowered] = Secret(value)
        else:
            problems.append(f"{where}.{name}: expected a non-empty one-line string (literal, env:NAME or file:/path)")
    return headers
