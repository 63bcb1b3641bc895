"""The `splunk_hec` sink: audit records as HEC event envelopes, POSTed in batches to Splunk's HTTP Event Collector.

Three layers (facts from reference/sinks.md §1):
- `render_event` / `render_batch`: pure, record → envelope → newline-separated JSON objects.
- `classify`: one HEC answer (status + `code`) → one `Verdict`, from the code table (§1.6, §1.7).
- `SplunkHecSink`: owns the httpx client; cuts records into requests by count and bytes, sends them, and turns the
  verdicts into a per-record `DeliveryReport`.

It never retries on its own: retries live in the deliver job's RQ Retry. The only re-sends inside one `send` are
the ones HEC asks for by shape: halves of a request refused as too large (413), and the events after the one a 400
with `invalid-event-number` refused (HEC indexed those before it and never read those after it). Each such re-send
carries fewer events than the request before it, so one `send` makes at most about 2 x len(records) requests.

Config errors (401/403, wrong URL, codes 1-5, 10, 11, 14, 16, 21, 22) keep the records and raise an alert instead
of dropping them (the complaint against Vector and Fluent Bit in §5.5). With `ack = true` a request counts as
delivered only once its ackId reads true (§1.5); otherwise the records are retried (at least once: every envelope
carries `fields.event_id` for dedupe).
"""

from __future__ import annotations

import gzip as gzip_codec
import json
import ssl
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Self

import httpx

from config.errors import ConfigError
from config.settings import Secret, SinkSettings, display_url
from events.records import AuditRecord
from sinks import http as sink_http
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkDisabled, SinkError, SinkRejected, SinkUnavailable
from sinks.options import Options

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
CHANNEL_HEADER = "X-Splunk-Request-Channel"
DEFAULT_SOURCE = "theauthapi"
DEFAULT_SOURCETYPE = "keytrail:audit"
# Audit JSON still shrinks several-fold at level 1; higher levels spend worker CPU, which is what bounds events/s.
GZIP_LEVEL = 1

# The HEC code table (§1.6), grouped by what we do about a code.
RETRY_CODES = frozenset({8, 9, 18, 19, 20})
# Config (or a proxy eating our body: we never send an empty one, so code 5 is not about the records): hold + alert.
ALERT_CODES = frozenset({1, 2, 3, 4, 5, 10, 11, 14, 16, 21, 22})
# One event was bad; `invalid-event-number` says which, and HEC indexed the ones before it (§1.7).
PER_EVENT_CODES = frozenset({6, 12, 13, 15})
INCORRECT_INDEX = 7
REASON_LIMIT = 200


# -- render: record → envelope (pure) ---------------------------------------------------------------------------------


def render_event(
    record: AuditRecord,
    *,
    index: str | None = None,
    source: str | None = DEFAULT_SOURCE,
    sourcetype: str | None = DEFAULT_SOURCETYPE,
    host: str | None = None,
) -> dict[str, Any]:
    """The HEC envelope of one record. Only keys HEC knows (an unknown key makes it drop events silently, §1.3);
    metadata on every envelope (it does not carry over between objects); `fields` flat strings for dedupe."""
    envelope: dict[str, Any] = {}
    epoch = epoch_seconds(record.time)
    if epoch is not None:
        envelope["time"] = epoch
    for key, value in (("host", host), ("source", source), ("sourcetype", sourcetype), ("index", index)):
        if value:
            envelope[key] = value
    envelope["event"] = record.to_dict()
    envelope["fields"] = {"event_id": str(record.event_id), "tenant": str(record.tenant), "topic": str(record.topic)}
    return envelope


def render_batch(
    records: Sequence[AuditRecord],
    *,
    index: str | None = None,
    source: str | None = DEFAULT_SOURCE,
    sourcetype: str | None = DEFAULT_SOURCETYPE,
    host: str | None = None,
) -> bytes:
    """One `/event` request body: the envelopes as concatenated JSON objects, one per line (not a JSON array)."""
    return b"".join(
        encode_envelope(render_event(r, index=index, source=source, sourcetype=sourcetype, host=host)) for r in records
    )


def encode_envelope(envelope: Mapping[str, Any]) -> bytes:
    """One line of a request body. NaN/Infinity are not JSON and would fail the whole request at HEC: refuse here."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def epoch_seconds(timestamp: str) -> float | None:
    """ISO 8601 → epoch seconds with millisecond precision (HEC's `time`); naive times are UTC; None if unreadable."""
    try:
        parsed = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp(), 3)


# -- classify: one HEC answer → one verdict (pure) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """200 code 0: HEC took every event of the request; with acks on, they count once `ack_id` reads true."""

    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class EventRefused:
    """400 with `invalid-event-number`: events before `position` are indexed, the one at `position` is refused for
    `reason`, and the ones after it were never read (send them again)."""

    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class Split:
    """The request was refused as a whole (413, or a bad event HEC did not locate): send each half on its own; a
    single event that is still refused is rejected for `reason`."""

    reason: str


# A SinkError member is the fate of the whole request: SinkUnavailable (retry, maybe alert), SinkRejected, SinkDisabled.
Verdict = Accepted | EventRefused | Split | SinkError


def classify(  # noqa: PLR0911 - one return per row of the HEC code table
    status: int,
    body: bytes | Mapping[str, Any],
    n_events: int,
    *,
    retry_after: str | None = None,
    index: str | None = None,
    now: datetime | None = None,
) -> Verdict:
    """What an answer to a request of `n_events` events means, by the HEC code table (§1.6, §1.7).

    `retry_after` is the raw Retry-After header; `index` the configured index, named in a code 7 reason.
    """
    payload = _payload(body)
    code = _int(payload.get("code"))
    label = _label(status, code, payload)
    hint = parse_retry_after(retry_after, now=now)

    if 200 <= status < 300:
        if code in (None, 0):
            return Accepted(ack_id=_int(payload.get("ackId")))
        return SinkUnavailable(f"{label}: not an answer to an event request; check the url", alert=True)
    if status == 413:
        return Split(label)
    if status in (401, 403) or code in ALERT_CODES:
        return SinkUnavailable(f"{label}: check the sink's token and HEC settings", retry_after=hint, alert=True)
    if code in PER_EVENT_CODES:
        position = _int(payload.get("invalid-event-number"))
        if position is not None and 0 <= position < n_events:
            return EventRefused(position, label)
        return EventRefused(0, label) if n_events == 1 else Split(label)
    if code == INCORRECT_INDEX:
        # Every envelope carries the one configured index, so the whole request shares the refusal.
        where = f"index {index!r}" if index else "the token's default index"
        return SinkRejected(f"{label}: {where} is not allowed for this token")
    if status in (408, 429) or status >= 500 or code in RETRY_CODES:
        return SinkUnavailable(label, retry_after=hint)
    if status == 410:
        return SinkDisabled(label)
    if status in (404, 405, 415):
        # A wrong URL or a proxy that refuses gzip is configuration, not a property of these records.
        return SinkUnavailable(f"{label}: check the sink's url and gzip settings", retry_after=hint, alert=True)
    if 400 <= status < 500:
        return SinkRejected(label)
    return SinkUnavailable(f"{label}: unexpected answer; check the sink's url", retry_after=hint, alert=True)


def classify_ack(status: int, body: bytes | Mapping[str, Any]) -> dict[int, bool] | SinkUnavailable:
    """An answer to an ack poll: {ackId: indexed?}, or why the poll failed. A 4xx means acks are unusable (alert);
    Vector quietly falls back to trusting the 200 there, which is how events get lost."""
    payload = _payload(body)
    if status == 200:
        acks = payload.get("acks")
        if isinstance(acks, Mapping):
            return {int(k): v is True for k, v in acks.items() if str(k).isdigit()}
        return SinkUnavailable("HEC ack poll: answer without acks", alert=True)
    label = _label(status, _int(payload.get("code")), payload, what="HEC ack poll")
    if 400 <= status < 500:
        return SinkUnavailable(
            f"{label}: indexer acknowledgement is unusable; fix the token or set ack = false", alert=True
        )
    return SinkUnavailable(label)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from `now` (see sinks.http), for callers that hold a datetime."""
    return sink_http.parse_retry_after(value, now=now.timestamp() if now is not None else None)


def _payload(body: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _label(status: int, code: int | None, payload: Mapping[str, Any], what: str = "HEC") -> str:
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "unknown status"
    text = " ".join(text.split())[:REASON_LIMIT]
    return f"{what} {status}" + (f" code {code}" if code is not None else "") + f": {text}"


# -- the sink: transport, batching, outcomes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    record_id: str
    line: bytes


class SplunkHecSink:
    """Sends records to one HEC endpoint. Built once per worker process; `send` blocks on HTTP (and ack polls)."""

    def __init__(
        self,
        name: str,
        url: str,
        token: Secret,
        *,
        index: str | None = None,
        source: str | None = DEFAULT_SOURCE,
        sourcetype: str | None = DEFAULT_SOURCETYPE,
        host: str | None = None,
        gzip: bool = True,
        max_events: int = 500,
        max_bytes: int = 1_000_000,
        timeout: float = 10.0,
        verify_tls: bool = True,
        ca_file: str | None = None,
        ack: bool = False,
        ack_timeout: float = 30.0,
        ack_poll_interval: float = 1.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = name
        self.base_url = _base_url(url)
        self.index = index
        self.source = source
        self.sourcetype = sourcetype
        self.host = host
        self.gzip = gzip
        self.max_events = max(1, max_events)
        self.max_bytes = max(1, max_bytes)
        self.ack = ack
        self.ack_timeout = ack_timeout
        self.ack_poll_interval = ack_poll_interval
        # One channel per sink object, i.e. per worker process (§1.5); ack ids are only meaningful on it.
        self.channel = str(uuid.uuid4())
        self._token = token
        self._event_url = self.base_url + EVENT_PATH
        self._ack_url = self.base_url + ACK_PATH
        # Without Authorization: the token is added per request (`_auth`), so no long-lived dict holds it in clear.
        self._headers = {"Content-Type": "application/json"}
        if ack:
            self._headers[CHANNEL_HEADER] = self.channel
        self._owns_client = client is None
        self._client = client if client is not None else self._build_client(timeout, verify_tls, ca_file)

    @staticmethod
    def _build_client(timeout: float, verify_tls: bool, ca_file: str | None) -> httpx.Client:
        verify: ssl.SSLContext | bool = verify_tls
        if verify_tls and ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        # trust_env off: TLS and proxies come from keytrail's settings, which are read in one place. The client keeps
        # cookies, which is what keeps ack polls on the indexer that took the POST behind a sticky load balancer.
        return httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            trust_env=False,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30.0),
        )

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        url = opts.string("url")
        token = opts.secret("token")
        kwargs: dict[str, Any] = {
            "index": opts.optional_string("index"),
            "source": opts.string("source", DEFAULT_SOURCE),
            "sourcetype": opts.string("sourcetype", DEFAULT_SOURCETYPE),
            "host": opts.optional_string("host"),
            "gzip": opts.boolean("gzip", True),
            "max_events": opts.integer("max_events", 500, minimum=1),
            "max_bytes": opts.integer("max_bytes", 1_000_000, minimum=1_024),
            "timeout": opts.number("timeout", 10.0, minimum=0.1),
            "verify_tls": opts.boolean("verify_tls", True),
            "ca_file": opts.optional_string("ca_file"),
            "ack": opts.boolean("ack", False),
            "ack_timeout": opts.number("ack_timeout", 30.0, minimum=0.1),
            "ack_poll_interval": opts.number("ack_poll_interval", 1.0, minimum=0.01),
        }
        if url and not url.lower().startswith(("http://", "https://")):
            opts.problems.append(f"sinks.{settings.name}.url: expected http://host:port or https://host:port")
        opts.finish()
        assert token is not None  # finish() raised otherwise
        try:
            return cls(settings.name, url, token, **kwargs)
        except (OSError, ssl.SSLError) as exc:
            problem = exc.strerror or str(exc)
            raise ConfigError([f"sinks.{settings.name}.ca_file: cannot load {kwargs['ca_file']}: {problem}"]) from None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # -- send --------------------------------------------------------------------------------------------------------

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        """Deliver `records`; raises the SinkError when no record got a final outcome, else reports each record."""
        report = DeliveryReport()
        items: list[_Item] = []
        for record in records:
            try:
                items.append(_Item(record.record_id, encode_envelope(self._render(record))))
            except (TypeError, ValueError) as exc:
                report.set(record.record_id, Outcome.REJECTED, f"cannot render as HEC JSON: {exc}")
        work: deque[list[_Item]] = deque(self._requests(items))
        awaiting: dict[int, list[_Item]] = {}
        failure: SinkError | None = None
        while work and failure is None:
            chunk = work.popleft()
            failure = self._settle(chunk, self._post(chunk), report, work, awaiting)
        if awaiting:
            ack_failure = self._await_acks(awaiting, report)
            failure = failure or ack_failure
        if failure is not None:
            for chunk in work:
                _mark(report, chunk, Outcome.RETRY, failure.reason)
            if not report.ids(Outcome.DELIVERED) and not report.ids(Outcome.REJECTED):
                raise failure
            if isinstance(failure, SinkUnavailable):
                report.retry_after = failure.retry_after
        return report

    def _settle(  # noqa: PLR0911 - one return per kind of verdict
        self,
        chunk: list[_Item],
        verdict: Verdict,
        report: DeliveryReport,
        work: deque[list[_Item]],
        awaiting: dict[int, list[_Item]],
    ) -> SinkError | None:
        """Apply one request's verdict: mark outcomes, queue the re-sends HEC asked for (first in line, in order),
        park acked requests in `awaiting`. Returns the error that stops this send, with `chunk` back in `work`."""
        if isinstance(verdict, Accepted):
            if not self.ack:
                _mark(report, chunk, Outcome.DELIVERED)
                return None
            if verdict.ack_id is not None:
                awaiting[verdict.ack_id] = chunk
                return None
            work.appendleft(chunk)
            return SinkUnavailable(
                "HEC answered without an ackId although ack = true: enable indexer acknowledgement on the token "
                "or set ack = false",
                alert=True,
            )
        if isinstance(verdict, EventRefused):
            _mark(report, chunk[: verdict.position], Outcome.DELIVERED)
            _mark(report, chunk[verdict.position : verdict.position + 1], Outcome.REJECTED, verdict.reason)
            if rest := chunk[verdict.position + 1 :]:
                work.appendleft(rest)
            return None
        if isinstance(verdict, Split):
            if len(chunk) == 1:
                _mark(report, chunk, Outcome.REJECTED, f"event too large or unreadable: {verdict.reason}")
            else:
                middle = len(chunk) // 2
                work.extendleft([chunk[middle:], chunk[:middle]])
            return None
        if isinstance(verdict, SinkRejected):
            _mark(report, chunk, Outcome.REJECTED, verdict.reason)
            return None
        work.appendleft(chunk)
        return verdict

    def _render(self, record: AuditRecord) -> dict[str, Any]:
        return render_event(record, index=self.index, source=self.source, sourcetype=self.sourcetype, host=self.host)

    def _requests(self, items: Sequence[_Item]) -> Iterator[list[_Item]]:
        """Cut items into request bodies of at most max_events and max_bytes (uncompressed); an item larger than
        max_bytes goes alone and HEC decides (a 413 then rejects it)."""
        chunk: list[_Item] = []
        size = 0
        for item in items:
            if chunk and (len(chunk) >= self.max_events or size + len(item.line) > self.max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += len(item.line)
        if chunk:
            yield chunk

    def _post(self, chunk: Sequence[_Item]) -> Verdict:
        body = b"".join(item.line for item in chunk)
        headers = self._auth()
        if self.gzip:
            body = gzip_codec.compress(body, compresslevel=GZIP_LEVEL)
            headers = {**headers, "Content-Encoding": "gzip"}
        try:
            response = self._client.post(self._event_url, content=body, headers=headers)
        except httpx.RequestError as exc:
            return SinkUnavailable(self._scrub(f"cannot reach HEC at {display_url(self._event_url)}: {_describe(exc)}"))
        verdict = classify(
            response.status_code,
            response.content,
            len(chunk),
            retry_after=response.headers.get("Retry-After"),
            index=self.index,
        )
        return self._scrubbed(verdict)

    # -- indexer acknowledgement (§1.5) ------------------------------------------------------------------------------

    def _await_acks(self, awaiting: dict[int, list[_Item]], report: DeliveryReport) -> SinkError | None:
        """Poll until every ackId read true or `ack_timeout` passed; confirmed requests are delivered, the others are
        marked RETRY (re-sent by the deliver job with a new ackId). Returns why some were not confirmed."""
        deadline = time.monotonic() + self.ack_timeout
        last_problem: SinkUnavailable | None = None
        while awaiting:
            answer = self._poll_acks(sorted(awaiting))
            if isinstance(answer, SinkUnavailable):
                last_problem = answer
                if answer.alert:
                    break
            else:
                for ack_id, indexed in answer.items():
                    if indexed and ack_id in awaiting:
                        _mark(report, awaiting.pop(ack_id), Outcome.DELIVERED)
            remaining = deadline - time.monotonic()
            if not awaiting or remaining <= 0:
                break
            time.sleep(min(self.ack_poll_interval, remaining))
        if not awaiting:
            return None
        if last_problem is not None and last_problem.alert:
            failure: SinkUnavailable = last_problem
        else:
            detail = f" (last poll: {last_problem.reason})" if last_problem is not None else ""
            failure = SinkUnavailable(
                f"HEC did not acknowledge {len(awaiting)} request(s) within {self.ack_timeout:g}s{detail}"
            )
        for chunk in awaiting.values():
            _mark(report, chunk, Outcome.RETRY, failure.reason)
        return failure

    def _poll_acks(self, ack_ids: list[int]) -> dict[int, bool] | SinkUnavailable:
        try:
            response = self._client.post(
                self._ack_url, params={"channel": self.channel}, json={"acks": ack_ids}, headers=self._auth()
            )
        except httpx.RequestError as exc:
            return SinkUnavailable(self._scrub(f"cannot reach HEC at {display_url(self._ack_url)}: {_describe(exc)}"))
        answer = classify_ack(response.status_code, response.content)
        if isinstance(answer, SinkUnavailable):
            scrubbed = self._scrubbed(answer)
            assert isinstance(scrubbed, SinkUnavailable)
            return scrubbed
        return answer

    # -- keeping the token out of every reason -----------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {**self._headers, "Authorization": f"Splunk {self._token.reveal()}"}

    def __repr__(self) -> str:
        return f"SplunkHecSink(name={self.name!r}, url={display_url(self.base_url)!r}, token={self._token!r})"

    def _scrub(self, text: str) -> str:
        token = self._token.reveal()
        return text.replace(token, "**********") if token and token in text else text

    def _scrubbed(self, verdict: Verdict) -> Verdict:
        """The verdict with the token blanked from its reason (a proxy may echo our headers into its error page)."""
        if isinstance(verdict, EventRefused | Split):
            return replace(verdict, reason=self._scrub(verdict.reason))
        if isinstance(verdict, SinkError) and self._scrub(verdict.reason) != verdict.reason:
            reason = self._scrub(verdict.reason)
            if isinstance(verdict, SinkUnavailable):
                return SinkUnavailable(reason, retry_after=verdict.retry_after, alert=verdict.alert)
            return type(verdict)(reason)
        return verdict


def _mark(report: DeliveryReport, chunk: Sequence[_Item], outcome: Outcome, reason: str | None = None) -> None:
    for item in chunk:
        report.set(item.record_id, outcome, reason)


def _describe(exc: httpx.RequestError) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _base_url(url: str) -> str:
    """`https://splunk:8088` from that or from a pasted endpoint URL (`…/services/collector[/event]`)."""
    base = url.strip().rstrip("/")
    for suffix in ("/services/collector/event/1.0", EVENT_PATH, "/services/collector"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base
