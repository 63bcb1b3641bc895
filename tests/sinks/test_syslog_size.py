"""Message size: the syslog sink cuts long records itself, on a UTF-8 boundary and marked, so rsyslog never has to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rsyslog_harness import Rsyslog, event_id_of

from config.settings import SinkSettings
from events.records import Actor, AuditRecord
from events.version import VERSION
from sinks.base import Outcome
from sinks.syslog.cef import cef_truncation_mark, render_cef, render_cef_message
from sinks.syslog.rfc5424 import (
    BOM,
    RSYSLOG_DEFAULT_MAX,
    TRUNCATION_MARK,
    Header,
    MessageTooLarge,
    cut_utf8,
    record_json,
    render_rfc5424,
    truncate_utf8,
)
from sinks.syslog.sink import SyslogSink

MakeRecord = Callable[..., AuditRecord]
HEADER = Header(facility=10, hostname="kt-test-host", app_name="keytrail", sd_id="keytrail@32473")
SD_ID = "keytrail@32473"

# About 20 KB each; three widths of character so the cut lands at different offsets inside a character.
EURO = "€" * 6827
EMOJI = "🔑" * 5120
MIXED = "x€🔑é" * 2048


def big(make_record: MakeRecord, name: str) -> AuditRecord:
    """A record with `name` in the entity name, the actor and the project: CEF caps each value at 1023 characters,
    so it takes several long values to make a CEF line longer than rsyslog accepts."""
    return make_record(entity_name=name, actor=Actor(uid=name, type="user"), project_id=name)


def full_msg(record: AuditRecord, message_format: str) -> str:
    """The MSG part the sink would send if there were no size limit."""
    if message_format == "cef":
        return render_cef(record, version=VERSION)
    return (BOM + record_json(record)).decode()


# --- the pure cut -----------------------------------------------------------------------------------------------

MARKS = st.sampled_from([TRUNCATION_MARK, b"", cef_truncation_mark(20480).encode(), "…".encode()])


@hypothesis_settings(max_examples=300)
@given(text=st.text(), limit=st.integers(min_value=0, max_value=200), mark=MARKS)
def test_truncate_utf8_fits_keeps_whole_characters_and_marks_the_cut(text: str, limit: int, mark: bytes) -> None:
    data = text.encode()
    if limit < len(mark) and len(data) > limit:
        with pytest.raises(ValueError, match="no room"):
            truncate_utf8(data, limit, mark)
        return
    out = truncate_utf8(data, limit, mark)
    assert len(out) <= limit
    decoded = out.decode("utf-8")  # strict: a broken character raises
    if len(data) <= limit:
        assert out == data
    else:
        assert out.endswith(mark)
        kept = decoded[: len(decoded) - len(mark.decode())]
        assert text.startswith(kept)
        # the longest such prefix: one more character would not fit
        assert len(kept.encode()) + len(mark) + len(text[len(kept)].encode()) > limit


@hypothesis_settings(max_examples=300)
@given(text=st.text(), limit=st.integers(min_value=0, max_value=200))
def test_cut_utf8_is_the_longest_whole_character_prefix(text: str, limit: int) -> None:
    data = text.encode()
    out = cut_utf8(data, limit)
    kept = out.decode("utf-8")
    assert text.startswith(kept)
    assert len(out) <= limit or out == data
    assert kept == text or len(out) + len(text[len(kept)].encode()) > limit


# A short generated chunk repeated up to ~20 KB: long enough that most examples are cut, in CEF too.
NAMES = st.builds(
    lambda chunk, times: chunk * times,
    st.text(alphabet=st.sampled_from('a€🔑é\\=|] "\nx'), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=2500),
)


# make_record is a factory with nothing to reset between examples (each call makes fresh ids).
@hypothesis_settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=NAMES, share=st.floats(min_value=0.0, max_value=1.2), message_format=st.sampled_from(["rfc5424", "cef"]))
def test_rendered_message_fits_and_keeps_event_id_and_mark(
    make_record: MakeRecord, name: str, share: float, message_format: str
) -> None:
    record = big(make_record, name)
    render = render_cef_message if message_format == "cef" else render_rfc5424
    # a limit anywhere from the 480-octet minimum to above the whole message, so most examples are cut
    max_size = max(480, int(len(render(record, HEADER, max_size=10**8)) * share))
    message = render(record, HEADER, max_size=max_size)
    assert len(message) <= max_size
    text = message.decode("utf-8")
    full = full_msg(record, message_format)
    if message_format == "cef":
        head, _, msg = text.partition(" - CEF:")
        msg = "CEF:" + msg
        assert f" externalId={record.event_id} " in msg
        mark = cef_truncation_mark(len(full.encode()))
    else:
        head, _, msg = text.partition("] ")
        assert f'event_id="{record.event_id}"' in head
        mark = TRUNCATION_MARK.decode()
    if msg == full:
        assert "truncated" not in head
        return
    assert msg.endswith(mark)
    kept = msg.removesuffix(mark)
    assert full.startswith(kept)
    if message_format == "rfc5424":
        assert f'truncated="{len(full.encode())}"' in head
    else:  # an odd run of backslashes before the mark would escape its space and glue it to the last value
        assert (len(kept) - len(kept.rstrip("\\"))) % 2 == 0


def test_cef_line_too_short_to_keep_the_event_id_is_rejected(make_record: MakeRecord) -> None:
    record = make_record(topic="t" * 600)
    with pytest.raises(MessageTooLarge, match="max_message"):
        render_cef_message(record, HEADER, max_size=480)


def test_stream_default_is_rsyslogs_default_limit() -> None:
    for transport in ("tcp", "tls", "relp"):
        options: dict[str, Any] = {"host": "h", "transport": transport}
        built = SyslogSink.from_settings(SinkSettings(name="siem", type="syslog", options=options))
        assert built.max_message == RSYSLOG_DEFAULT_MAX == 8096


# --- against a real rsyslog at its default limits -------------------------------------------------------------

TRANSPORTS = [
    pytest.param("udp", "udp", {}, id="udp"),
    pytest.param("tcp", "tcp", {}, id="imtcp-octet"),
    pytest.param("tcp", "tcp", {"framing": "newline"}, id="imtcp-newline"),
    pytest.param("ptcp", "tcp", {}, id="imptcp-octet"),
    pytest.param("ptcp", "tcp", {"framing": "newline"}, id="imptcp-newline"),
    pytest.param("tls", "tls", {}, id="tls"),
    pytest.param("relp", "relp", {}, id="relp"),
]


def rsyslog_sink(rsyslog: Rsyslog, input_name: str, transport: str, **options: Any) -> SyslogSink:
    if transport == "tls":
        options.update(ca_file=str(rsyslog.certs.ca), server_name="localhost")
    settings = {"host": "127.0.0.1", "port": rsyslog.ports[input_name], "transport": transport, "timeout": 5.0}
    return SyslogSink.from_settings(SinkSettings(name="siem", type="syslog", options={**settings, **options}))


def received_since(rsyslog: Rsyslog, before: int, event_ids: set[str]) -> list[dict[str, Any]]:
    """Every message rsyslog wrote after the first `before`, once each of `event_ids` arrived (junk included)."""
    rsyslog.wait_for(event_ids)
    return rsyslog.messages()[before:]


@pytest.mark.rsyslog
@pytest.mark.parametrize("message_format", ["rfc5424", "cef"])
@pytest.mark.parametrize(("input_name", "transport", "options"), TRANSPORTS)
def test_long_multibyte_records_arrive_as_one_marked_message_each(
    module_rsyslog: Rsyslog,
    make_record: MakeRecord,
    input_name: str,
    transport: str,
    options: dict[str, Any],
    message_format: str,
) -> None:
    long_records = [big(make_record, name) for name in (EURO, EMOJI, MIXED)]
    short, after = make_record(), make_record()
    before = len(module_rsyslog.messages())
    siem = rsyslog_sink(module_rsyslog, input_name, transport, format=message_format, **options)
    try:
        first = siem.send([*long_records, short]).ids(Outcome.DELIVERED)
        assert first == [r.record_id for r in [*long_records, short]]
        assert siem.send([after]).ids(Outcome.DELIVERED) == [after.record_id]  # same connection, framing intact
    finally:
        siem.close()

    records = [*long_records, short, after]
    got = received_since(module_rsyslog, before, {r.event_id for r in records})
    assert [event_id_of(m) for m in got if event_id_of(m) is None] == [], "rsyslog made a message with no event_id"
    assert sorted(str(event_id_of(m)) for m in got) == sorted(r.event_id for r in records), "one message per record"

    by_id = {event_id_of(m): m for m in got}
    for record in records:
        message = by_id[record.event_id]
        full = full_msg(record, message_format)
        if record in (short, after):
            assert message["msg"] == full  # intact, as its own message
            continue
        octets = len(full.encode())
        mark = cef_truncation_mark(octets) if message_format == "cef" else TRUNCATION_MARK.decode()
        assert message["msg"].endswith(mark)
        kept = message["msg"].removesuffix(mark)
        assert len(kept) > 100
        assert full.startswith(kept), "the kept text is not a whole-character prefix of the record"
        if message_format == "cef":
            extension = message["parsed"]["cef"]["Extensions"]
            assert (extension["externalId"], extension["cn1Label"], extension["cn1"]) == (
                record.event_id,
                "truncated",
                str(octets),
            )
        else:
            assert message["parsed"]["rfc5424-sd"][SD_ID]["truncated"] == str(octets)


@pytest.mark.rsyslog
@pytest.mark.parametrize(("input_name", "transport", "options"), TRANSPORTS)
def test_default_rsyslog_takes_exactly_our_default_size(
    module_rsyslog: Rsyslog, make_record: MakeRecord, input_name: str, transport: str, options: dict[str, Any]
) -> None:
    """Pins the default to the real limit: a message of RSYSLOG_DEFAULT_MAX octets arrives whole, one more is cut.
    (Also proves the test rsyslog runs at its default limits.)"""
    siem = rsyslog_sink(module_rsyslog, input_name, transport, max_message=65507, **options)
    fits, over, sentinel = make_record(entity_name="x" * 9000), make_record(entity_name="x" * 9000), make_record()
    messages = [
        render_rfc5424(fits, HEADER, max_size=RSYSLOG_DEFAULT_MAX),
        render_rfc5424(over, HEADER, max_size=RSYSLOG_DEFAULT_MAX + 1),
        render_rfc5424(sentinel, HEADER),  # behind whatever junk the cut leaves, so the next test does not see it
    ]
    assert [len(m) for m in messages[:2]] == [RSYSLOG_DEFAULT_MAX, RSYSLOG_DEFAULT_MAX + 1]
    try:
        assert siem.transport.deliver(messages) == [None, None, None]
    finally:
        siem.close()
    arrived = module_rsyslog.wait_for({fits.event_id, over.event_id, sentinel.event_id})
    received = {event_id_of(m): m["msg"] for m in arrived}
    assert received[fits.event_id].encode().endswith(TRUNCATION_MARK)
    assert not received[over.event_id].encode().endswith(TRUNCATION_MARK)
