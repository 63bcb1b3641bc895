"""The HEC sink with indexer acks behind a load balancer: two fake HEC indexers behind a loopback round-robin proxy.

ackIds are per indexer (reference/sinks.md §1.5): each fake keeps its own channels, so an id polled on the other
indexer reads false, and both indexers hand out 0, 1, ... on the same channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from config.settings import Secret
from events.records import AuditRecord
from sinks.base import Outcome
from sinks.errors import SinkUnavailable
from sinks.splunk_hec.sink import SplunkHecSink
from tests.fakes.hec import FakeHec
from tests.fakes.lb import RoundRobinProxy
from tests.sinks.test_splunk_hec import TOKEN, make_records

ACK_POLL = 0.02
MAX_SENDS = 10  # the deliver job's retries, bounded


@pytest.fixture
def indexers() -> Iterator[tuple[FakeHec, FakeHec]]:
    with FakeHec(ack_tokens=[TOKEN], ack_delay=0.05) as one, FakeHec(ack_tokens=[TOKEN], ack_delay=0.05) as two:
        yield one, two


def hec_sink(url: str, **options: object) -> SplunkHecSink:
    settings: dict[str, object] = {"ack": True, "max_events": 2, "ack_poll_interval": ACK_POLL, "ack_timeout": 2.0}
    settings.update(options)
    return SplunkHecSink("splunk", url, Secret(TOKEN), **settings)  # type: ignore[arg-type]


def deliver_until_done(sink: SplunkHecSink, records: list[AuditRecord], *indexers: FakeHec) -> int:
    """Send as the deliver job does (records not DELIVERED are sent again), at most MAX_SENDS times; the sends made.
    Each record reported DELIVERED must have been confirmed by an ack of the indexer that took it."""
    by_id = {r.record_id: r.event_id for r in records}
    pending = list(records)
    for sends in range(1, MAX_SENDS + 1):
        try:
            report = sink.send(pending)
        except SinkUnavailable:
            continue
        assert not report.ids(Outcome.REJECTED)
        delivered = set(report.ids(Outcome.DELIVERED))
        confirmed = set().union(*(indexer.acked_event_ids for indexer in indexers))
        assert {by_id[record_id] for record_id in delivered} <= confirmed
        pending = [r for r in pending if r.record_id not in delivered]
        if not pending:
            return sends
    raise AssertionError(f"{len(pending)} records still owed after {MAX_SENDS} sends")


def test_sticky_lb_keeps_every_ack_poll_on_the_indexer_that_issued_it(indexers: tuple[FakeHec, FakeHec]) -> None:
    one, two = indexers
    records = make_records(10)
    with RoundRobinProxy([one.url, two.url], sticky=True) as lb:
        sink = hec_sink(lb.url)
        try:
            report = sink.send(records)
        finally:
            sink.close()
        routes = lb.routes

    assert len(report.ids(Outcome.DELIVERED)) == 10
    # Every request after the first carried the LB's cookie back, so all of them (polls included) hit one indexer.
    assert all(route.cookie_sent for route in routes[1:])
    assert len({route.backend for route in routes}) == 1
    assert any(route.path.endswith("/ack") for route in routes)
    assert (one.event_count + two.event_count, one.duplicate_count + two.duplicate_count) == (10, 0)
    assert one.event_ids | two.event_ids == {r.event_id for r in records}


def test_non_sticky_lb_still_delivers_every_event_by_resending() -> None:
    records = make_records(10)
    with ExitStack() as stack:
        # `two` acknowledges later than `one`: its ackIds read false a while after `one`'s same numbers read true.
        one = stack.enter_context(FakeHec(ack_tokens=[TOKEN], ack_delay=0.0))
        two = stack.enter_context(FakeHec(ack_tokens=[TOKEN], ack_delay=0.2))
        lb = stack.enter_context(RoundRobinProxy([one.url, two.url], sticky=False))
        sink = hec_sink(lb.url, ack_timeout=0.5)
        stack.callback(sink.close)
        sends = deliver_until_done(sink, records, one, two)
        backends = {route.backend for route in lb.routes}

    assert backends == {0, 1}
    assert sends >= 2  # the first send met one ackId from two indexers and re-sent instead of trusting it
    # At least once: duplicates are allowed (fields.event_id dedupes at search time), a missing event is not.
    assert one.event_ids | two.event_ids == {r.event_id for r in records}


def test_an_ack_from_another_indexer_never_confirms_a_batch() -> None:
    """Indexer `late` never acknowledges; behind a non-sticky LB its ackId 0 is also `fast`'s ackId 0, which reads
    true. A sink that trusted that `true` would report `late`'s batch delivered."""
    with ExitStack() as stack:
        fast = stack.enter_context(FakeHec(ack_tokens=[TOKEN], ack_delay=0.0))
        late = stack.enter_context(FakeHec(ack_tokens=[TOKEN], ack_delay=None))
        lb = stack.enter_context(RoundRobinProxy([fast.url, late.url], sticky=False))
        sink = hec_sink(lb.url, max_events=1, ack_timeout=0.3)
        stack.callback(sink.close)
        channel = sink.channel
        records = make_records(2)

        with pytest.raises(SinkUnavailable) as caught:
            sink.send(records)

    assert late.event_ids  # the LB did send one batch to `late`
    assert caught.value.alert
    assert "sticky" in caught.value.reason
    # ids pending on an indexer could read true for a later batch: the next send uses a fresh channel
    assert sink.channel != channel
