"""The syslog sink against a second real collector, syslog-ng: asserts on what syslog-ng itself parsed.

syslog-ng comes from scripts/install-syslog-ng (Debian's package unpacked beside rsyslog). Without it these tests skip
locally and fail when CI is set, as the rsyslog ones do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rsyslog_harness import Certs, Unavailable
from syslogng_harness import SyslogNg

from config.settings import SinkSettings
from events.records import AuditRecord, Severity
from sinks.base import Outcome
from sinks.syslog.sink import SyslogSink

MakeRecord = Callable[..., AuditRecord]
TRICKY = 'ac"me] \\ tenant'  # every character SD-PARAM escaping covers


@pytest.fixture
def syslog_ng(tmp_path: Path, certs: Certs) -> Iterator[SyslogNg]:
    """A syslog-ng of the test's own, so every message it wrote came from that test."""
    try:
        server = SyslogNg(tmp_path / "syslog-ng", certs)
        server.start()
    except Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI is set, so this fails instead of skipping")
        pytest.skip(str(exc))
    yield server
    server.stop()


def sink_to(server: SyslogNg, source: str, **options: Any) -> SyslogSink:
    transport = "tls" if source == "tls" else "tcp"
    if transport == "tls":
        options.update(ca_file=str(server.certs.ca), server_name="localhost")
    settings = {"host": "127.0.0.1", "port": server.ports[source], "transport": transport, "timeout": 5.0}
    settings |= {"hostname": "kt-test-host", **options}
    return SyslogSink.from_settings(SinkSettings(name="siem", type="syslog", options=settings))


def delivered(siem: SyslogSink, records: list[AuditRecord]) -> None:
    try:
        report = siem.send(records)
    finally:
        siem.close()
    assert report.outcomes == {record.record_id: Outcome.DELIVERED for record in records}


SOURCES = [
    pytest.param("octet", {}, id="tcp-octet"),
    pytest.param("newline", {"framing": "newline"}, id="tcp-newline"),
    pytest.param("tls", {}, id="tls-octet"),
]


@pytest.mark.parametrize(("source", "options"), SOURCES)
def test_syslog_ng_parses_the_rfc5424_header_structured_data_and_message(
    syslog_ng: SyslogNg, make_record: MakeRecord, source: str, options: dict[str, Any]
) -> None:
    records = [
        make_record(tenant=TRICKY, severity_id=Severity.HIGH),
        make_record(topic="api-key.firstUsed", entity_fingerprint=None),
        make_record(raw_redacted={"note": "multi\nline ünïcode"}),
    ]
    delivered(sink_to(syslog_ng, source, **options), records)

    received = syslog_ng.wait_for(len(records), source=source)
    assert len(received) == len(records)
    by_event_id = {got.get("_SDATA", {}).get("keytrail@32473", {}).get("event_id"): got for got in received}
    for record in records:
        got = by_event_id[record.event_id]
        assert (got["HOST"], got["PROGRAM"], got["MSGID"]) == ("kt-test-host", "keytrail", record.topic)
        assert "PID" not in got  # PROCID "-" is no PID
        assert (got["facility_num"], got["severity_num"]) == (10, 3 if record is records[0] else 6)
        assert got["isodate"] == "2026-01-02T03:04:05.123456+00:00"
        expected_sd = {
            "event_id": record.event_id,
            "tenant": record.tenant,
            "topic": record.topic,
            "entity_type": "API Key",
        }
        if record.entity.fingerprint:
            expected_sd["fingerprint"] = record.entity.fingerprint
        assert got["_SDATA"] == {"keytrail@32473": expected_sd}  # SD-PARAM values unescaped by syslog-ng
        assert json.loads(got["msg"]) == record.to_dict()  # syslog-ng drops the BOM


@pytest.mark.parametrize("source", ["octet", "tls"])
def test_syslog_ng_takes_apart_the_cef_header_and_extension(
    syslog_ng: SyslogNg, make_record: MakeRecord, source: str
) -> None:
    record = make_record(topic="api-key.rotated|x", entity_name="k=v \\ pipe| two", tenant="acme=corp")
    delivered(sink_to(syslog_ng, source, format="cef"), [record])

    (got,) = syslog_ng.wait_for(1, source=source)
    assert (got["PROGRAM"], got["MSGID"], got["sd"]) == ("keytrail", "api-key.rotated|x", "")
    cef = got["cef"]
    extension = cef.pop("ext")
    # regexp-parser() splits at unescaped pipes only; values are as sent (CEF-escaped).
    assert cef == {
        "version": "0",
        "DeviceVendor": "keytrail",
        "DeviceProduct": "keytrail",
        "DeviceVersion": cef["DeviceVersion"],
        "SignatureID": "api-key.rotated\\|x",
        "Name": "API Key rotated\\|x",
        "Severity": "1",
    }
    assert extension == {
        "rt": "1767323045123",
        "externalId": record.event_id,
        "act": "create",
        "suser": "user_42",
        "msg": "API Key rotated|x in tenant acme\\=corp",
        "cs1Label": "tenant",
        "cs1": "acme\\=corp",
        "cs2Label": "entityType",
        "cs2": "API Key",
        "cs3Label": "fingerprint",
        "cs3": record.entity.fingerprint,
        "cs4Label": "entityName",
        "cs4": "k\\=v \\\\ pipe| two",
        "cs5Label": "projectId",
        "cs5": "proj_1",
        "cs6Label": "keyHint",
        "cs6": "live_…9f3a",
    }


def test_octet_counted_frames_on_a_line_input_are_not_parsed_as_rfc5424(
    syslog_ng: SyslogNg, make_record: MakeRecord
) -> None:
    """The assertions above are sharp: with the framing the input does not expect, syslog-ng parses nothing of ours."""
    record = make_record()
    delivered(sink_to(syslog_ng, "newline"), [record])  # octet framing, the sink's default

    (got,) = syslog_ng.wait_for(1, source="newline")
    assert got["PROGRAM"] != "keytrail"
    assert "MSGID" not in got
    assert "_SDATA" not in got
    assert record.event_id in got["msg"]  # it arrived, unparsed, as text
