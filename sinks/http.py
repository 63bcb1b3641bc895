"""The HTTP layer the HTTP sinks share: their client, Retry-After, reading an answer as a SinkError, posting loops.

`splunk_hec`, `webhook` and `slack` build their client here (`build_client`), read a peer's Retry-After here
(`parse_retry_after`, also used by The Auth API client), and turn a transport error into SinkUnavailable here
(`transport_error`, `unreachable`). The webhook-style sinks also share the generic reading of a status
(`read_answer` + `status_error`: 2xx delivered; 408, 429, 5xx retry later; 3xx retry with an alert, since redirects
are not followed; other 4xx rejected), and the one-request-per-record loop (`post`, `post_each`). HEC reads its own
code table instead (`sinks.splunk_hec.verdicts`).
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from events.records import AuditRecord
from events.version import VERSION
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkError, SinkRejected, SinkUnavailable

# A peer asking for more than a day is misconfigured or hostile; never wait longer than this on its word.
MAX_RETRY_AFTER = 24 * 3600.0
USER_AGENT = f"keytrail/{VERSION}"
EXCERPT_LIMIT = 200
RETRY_STATUSES = frozenset({408, 429})
DEFAULT_POOL = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own default

Classifier = Callable[[httpx.Response], SinkError | None]


# -- the client ------------------------------------------------------------------------------------------------------


def build_client(
    timeout: float,
    *,
    verify_tls: bool = True,
    ca_file: str | None = None,
    trust_env: bool = True,
    limits: httpx.Limits = DEFAULT_POOL,
) -> httpx.Client:
    """A client that never follows redirects (a redirect is a URL to fix, and could carry a token elsewhere), says
    who we are, and verifies TLS against `ca_file` when given (else the system CAs). Reading `ca_file` can raise
    OSError / ssl.SSLError: callers report those as configuration problems."""
    verify: ssl.SSLContext | bool = verify_tls
    if verify_tls and ca_file:
        verify = ssl.create_default_context(cafile=ca_file)
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        verify=verify,
        trust_env=trust_env,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        limits=limits,
    )


# -- reading an answer -----------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float | datetime | None = None) -> float | None:
    """`Retry-After` as seconds from `now` (unix time or an aware datetime; default: the clock): delta-seconds
    (decimals accepted) or an HTTP date; clamped to 0..MAX_RETRY_AFTER; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        start = now.timestamp() if isinstance(now, datetime) else (time.time() if now is None else now)
        seconds = when.timestamp() - start
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def excerpt(text: str, limit: int = EXCERPT_LIMIT) -> str:
    """A short, single-line piece of a response body for a reason text."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text[: limit * 4]).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a reason needs from a response: its status, a body excerpt, `detail` (`<label> <status>: <excerpt>`)
    and the Retry-After hint in seconds."""

    label: str
    status: int
    text: str
    retry_after: float | None

    @property
    def detail(self) -> str:
        return f"{self.label} {self.status}: {self.text}" if self.text else f"{self.label} {self.status}"

    @property
    def retryable(self) -> bool:
        """408, 429 and 5xx (and the informational 1xx no final answer should be): worth sending again later."""
        return self.status in RETRY_STATUSES or self.status >= 500 or self.status < 200


def read_answer(
    response: httpx.Response, *, label: str = "HTTP", limit: int = EXCERPT_LIMIT, now: float | None = None
) -> Answer:
    retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
    return Answer(label, response.status_code, excerpt(response.text, limit), retry_after)


def status_error(answer: Answer, *, redirect_hint: str = "fix the URL") -> SinkError | None:
    """The generic reading of a status (see the module docstring); a sink checks its own special cases first."""
    if answer.retryable:
        return SinkUnavailable(answer.detail, retry_after=answer.retry_after)
    if 200 <= answer.status < 300:
        return None
    if answer.status < 400:
        return SinkUnavailable(
            f"{answer.label} {answer.status}: redirects are not followed; {redirect_hint}", alert=True
        )
    return SinkRejected(answer.detail)


def transport_error(exc: httpx.HTTPError) -> SinkUnavailable:
    """The class name only: httpx messages can quote the URL, which may hold a token."""
    if isinstance(exc, httpx.TimeoutException):
        return SinkUnavailable(f"timed out ({type(exc).__name__})")
    return SinkUnavailable(f"network error ({type(exc).__name__})")


def unreachable(where: str, exc: httpx.HTTPError) -> str:
    """`cannot reach <where>: <ErrorClass>: <message>`, for peers whose URL holds no secret (scrub it still)."""
    detail = str(exc).strip()
    described = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return f"cannot reach {where}: {described}"


# -- posting ---------------------------------------------------------------------------------------------------------


def post(client: httpx.Client, url: str, classify: Classifier, **request: Any) -> SinkError | None:
    """One POST, read by `classify`; a transport failure is SinkUnavailable without the URL."""
    try:
        response = client.post(url, **request)
    except httpx.HTTPError as exc:
        return transport_error(exc)
    return classify(response)


def post_each(
    records: Sequence[AuditRecord],
    deliver: Callable[[AuditRecord], SinkError | None],
    *,
    rejects_rest: type[SinkRejected] | None = None,
) -> DeliveryReport:
    """Send records one by one. A rejected record is dead-lettered and the rest go on (unless the rejection is a
    `rejects_rest`, which says every later record would meet it too). The first "retry later" or "disabled" stops
    the batch: raised when it is the first record (the whole batch shares it), else the rest are reported RETRY and
    the next attempt meets the error first."""
    report = DeliveryReport()
    for index, record in enumerate(records):
        error = deliver(record)
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
