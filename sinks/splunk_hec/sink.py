"""The HEC sink: batches records into `/event` requests, sends them, and turns HEC's verdicts into a report.

See the package docstring for what it guarantees; `encoding`, `verdicts` and `acks` hold the layers it ties together.
"""

from __future__ import annotations

import copy
import gzip as gzip_codec
import ssl
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self, TypeVar

import httpx

from config.errors import ConfigError
from config.settings import Secret, SinkSettings, display_url
from events.records import AuditRecord
from sinks import http
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkError, SinkRejected, SinkUnavailable
from sinks.options import Options
from sinks.splunk_hec.acks import CHANNEL_HEADER, AckChannel
from sinks.splunk_hec.encoding import DEFAULT_SOURCE, DEFAULT_SOURCETYPE, encode_envelope, render_event
from sinks.splunk_hec.verdicts import Accepted, EventRefused, Split, Verdict, classify

EVENT_PATH = "/services/collector/event"
# Audit JSON still shrinks several-fold at level 1; higher levels spend worker CPU, which is what bounds events/s.
GZIP_LEVEL = 1
POOL_LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30.0)

E = TypeVar("E", bound=SinkError)


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
        self._token = token
        self._event_url = self.base_url + EVENT_PATH
        # Without Authorization: the token is added per request (`_auth`), so no long-lived dict holds it in clear.
        self._headers = {"Content-Type": "application/json"}
        self._owns_client = client is None
        # trust_env off: TLS and proxies come from keytrail's settings, which are read in one place. The client keeps
        # cookies (httpx's default jar, one per sink and so per channel), which is what keeps ack polls on the indexer
        # that took the POST behind a cookie-sticky load balancer. An injected client should not be shared between
        # sinks that use acks, or their channels share one stickiness cookie.
        self._client = (
            client
            if client is not None
            else http.build_client(timeout, verify_tls=verify_tls, ca_file=ca_file, trust_env=False, limits=POOL_LIMITS)
        )
        self._acks = AckChannel(self._client, self.base_url, self._auth)
        # Set once two indexers answered our channel (an LB that is not sticky): from then on one request at a time
        # waits for its ack before the next is sent, so only one ackId is ever pending and a `true` is never another
        # indexer's. Slower, but every ack stays trustworthy and every batch still gets through.
        self._one_in_flight = False

    @property
    def channel(self) -> str:
        """The HEC channel this sink's requests (and its ack polls) carry."""
        return self._acks.id

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
        awaiting: dict[int, list[list[_Item]]] = {}
        failure: SinkError | None = None
        while work and failure is None:
            chunk = work.popleft()
            failure = self._settle(chunk, self._post(chunk), report, work, awaiting)
            if awaiting and self._one_in_flight:
                failure = self._await_acks(awaiting, report) or failure
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
        awaiting: dict[int, list[list[_Item]]],
    ) -> SinkError | None:
        """Apply one request's verdict: mark outcomes, queue the re-sends HEC asked for (first in line, in order),
        park acked requests in `awaiting`. Returns the error that stops this send, with `chunk` back in `work`."""
        if isinstance(verdict, Accepted):
            if not self.ack:
                _mark(report, chunk, Outcome.DELIVERED)
                return None
            if verdict.ack_id is not None:
                # Two requests with one ackId: more than one indexer answers this channel (§1.5); see _await_acks.
                awaiting.setdefault(verdict.ack_id, []).append(chunk)
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
            return SinkUnavailable(self._scrub(http.unreachable(f"HEC at {display_url(self._event_url)}", exc)))
        verdict = classify(
            response.status_code,
            response.content,
            len(chunk),
            retry_after=response.headers.get("Retry-After"),
            index=self.index,
        )
        return self._scrubbed(verdict)

    # -- indexer acknowledgement (§1.5) ------------------------------------------------------------------------------

    def _await_acks(self, awaiting: dict[int, list[list[_Item]]], report: DeliveryReport) -> SinkError | None:
        """Confirmed requests are delivered, the others are marked RETRY (re-sent by the deliver job with a new
        ackId; at least once, `fields.event_id` dedupes). Returns why some were not confirmed.

        Behind a load balancer that is not sticky (or whose cookie did not come back) two indexers can issue the
        same ackId on our channel, and a poll may reach either: a `true` for that id cannot say which request was
        indexed, so every request sharing an id is re-sent instead of trusted (vector#19417 trusted it). An id
        issued once is safe to trust: the channel is rotated after any send that leaves ids pending anywhere, so
        no other indexer holds that id on this channel. Polls that reach another indexer read false; they are
        retried until `ack_timeout`, then the request is re-sent too. Empties `awaiting`."""
        unique = {ack_id: chunks[0] for ack_id, chunks in awaiting.items() if len(chunks) == 1}
        shared = [chunk for chunks in awaiting.values() if len(chunks) > 1 for chunk in chunks]
        awaiting.clear()
        failure: SinkUnavailable | None = None
        if unique:
            confirmed, failure = self._acks.wait(
                list(unique), timeout=self.ack_timeout, poll_interval=self.ack_poll_interval
            )
            for ack_id in confirmed:
                _mark(report, unique.pop(ack_id), Outcome.DELIVERED)
        if failure is not None:
            failure = self._scrub_error(failure)
            for chunk in unique.values():
                _mark(report, chunk, Outcome.RETRY, failure.reason)
        if shared:
            reason = (
                f"HEC issued one ackId to {len(shared)} requests on channel {self._acks.id}: more than one indexer "
                "answers it, so acks cannot be trusted; make the load balancer sticky by cookie (re-sent)"
            )
            _mark_all(report, shared, Outcome.RETRY, reason)
            self._one_in_flight = True
            failure = failure or SinkUnavailable(reason, alert=True)
        if failure is not None:
            self._acks.rotate()
        return failure

    # -- keeping the token out of every reason -----------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        headers = {**self._headers, "Authorization": f"Splunk {self._token.reveal()}"}
        if self.ack:
            headers[CHANNEL_HEADER] = self._acks.id  # read per request: the channel rotates (AckChannel.rotate)
        return headers

    def __repr__(self) -> str:
        return f"SplunkHecSink(name={self.name!r}, url={display_url(self.base_url)!r}, token={self._token!r})"

    def _scrub(self, text: str) -> str:
        token = self._token.reveal()
        return text.replace(token, "**********") if token and token in text else text

    def _scrubbed(self, verdict: Verdict) -> Verdict:
        """The verdict with the token blanked from its reason (a proxy may echo our headers into its error page)."""
        if isinstance(verdict, EventRefused | Split):
            return replace(verdict, reason=self._scrub(verdict.reason))
        if isinstance(verdict, SinkError):
            return self._scrub_error(verdict)
        return verdict

    def _scrub_error(self, error: E) -> E:
        reason = self._scrub(error.reason)
        if reason == error.reason:
            return error
        scrubbed = copy.copy(error)  # keeps retry_after and alert
        scrubbed.reason, scrubbed.args = reason, (reason,)
        return scrubbed


def _mark(report: DeliveryReport, chunk: Sequence[_Item], outcome: Outcome, reason: str | None = None) -> None:
    for item in chunk:
        report.set(item.record_id, outcome, reason)


def _mark_all(report: DeliveryReport, chunks: Sequence[Sequence[_Item]], outcome: Outcome, reason: str) -> None:
    for chunk in chunks:
        _mark(report, chunk, outcome, reason)


def _base_url(url: str) -> str:
    """`https://splunk:8088` from that or from a pasted endpoint URL (`…/services/collector[/event]`)."""
    base = url.strip().rstrip("/")
    for suffix in ("/services/collector/event/1.0", EVENT_PATH, "/services/collector"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base
