"""RELP over TLS (`transport = "relp"`, `tls = true`) against a real rsyslog imrelp with `tls="on"`: server
certificate and name checks, client certificates under `tls.authMode="name"`, restarts, and the config problems."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rsyslog_harness import Certs, Rsyslog, event_id_of
from test_syslog import by_event_id, send_across_a_restart, sink

from config.errors import ConfigError
from events.records import AuditRecord
from sinks.base import Outcome
from sinks.errors import SinkUnavailable
from sinks.syslog.relp import RelpTransport
from sinks.syslog.sink import SyslogSink

MakeRecord = Callable[..., AuditRecord]


def relp_tls_sink(rsyslog: Rsyslog, input_name: str = "relp_tls", **options: Any) -> SyslogSink:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": rsyslog.ports[input_name],
        "transport": "relp",
        "tls": True,
        "ca_file": str(rsyslog.certs.ca),
        "hostname": "kt-test-host",
        "timeout": 5.0,
        **options,
    }
    return sink(**{key: value for key, value in settings.items() if value is not None})


def with_client_cert(rsyslog: Rsyslog) -> dict[str, Any]:
    return {"cert_file": str(rsyslog.certs.client_cert), "key_file": str(rsyslog.certs.client_key)}


@pytest.mark.rsyslog
def test_relp_over_tls_is_acknowledged_and_parsed_by_rsyslog(rsyslog: Rsyslog, make_record: MakeRecord) -> None:
    # No server_name: the host (127.0.0.1) is the name checked, against the server certificate's IP address.
    siem = relp_tls_sink(rsyslog)
    records = [make_record(tenant=f"tenant-{n}") for n in range(5)]
    try:
        report = siem.send(records)
    finally:
        siem.close()
    assert set(report.ids(Outcome.DELIVERED)) == {r.record_id for r in records}
    arrived = by_event_id(rsyslog.wait_for({r.event_id for r in records}))
    assert set(arrived) == {r.event_id for r in records}
    for record in records:
        message = arrived[record.event_id]
        assert message["input"] == "kt_relp_tls"
        assert message["hostname"] == "kt-test-host"
        assert message["msgid"] == record.topic
        assert message["parsed"]["rfc5424-sd"]["keytrail@32473"]["tenant"] == record.tenant


@pytest.mark.rsyslog
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param({"server_name": "wrong.example"}, "Hostname mismatch", id="wrong-name"),
        pytest.param({"ca_file": None}, "certificate verification failed", id="system-cas"),
    ],
)
def test_relp_over_tls_refuses_a_server_it_cannot_verify(
    rsyslog: Rsyslog, make_record: MakeRecord, options: dict[str, Any], reason: str
) -> None:
    siem = relp_tls_sink(rsyslog, **options)
    record = make_record()
    with pytest.raises(SinkUnavailable, match=reason) as caught:
        siem.send([record])
    siem.close()
    assert caught.value.alert
    assert caught.value.reason.startswith(f"relp+tls 127.0.0.1:{rsyslog.ports['relp_tls']}: ")
    assert rsyslog.wait_for({record.event_id}, timeout=0.5) == []


@pytest.mark.rsyslog
def test_relp_over_tls_with_the_wrong_ca_keeps_records_owed_until_the_ca_is_fixed(
    rsyslog: Rsyslog, make_record: MakeRecord, tmp_path: Path
) -> None:
    other = Certs.generate(tmp_path / "other-ca")
    ca_file = tmp_path / "ca.pem"
    shutil.copy(other.ca, ca_file)
    records = [make_record() for _ in range(3)]

    wrong = relp_tls_sink(rsyslog, ca_file=str(ca_file))
    with pytest.raises(SinkUnavailable, match="certificate verification failed") as caught:
        wrong.send(records)
    wrong.close()
    assert caught.value.alert  # the whole batch stays owed; the deliver job retries it
    assert rsyslog.wait_for({r.event_id for r in records}, timeout=0.5) == []

    shutil.copy(rsyslog.certs.ca, ca_file)  # the operator fixes the CA file; the worker rebuilds its sinks
    fixed = relp_tls_sink(rsyslog, ca_file=str(ca_file))
    try:
        assert set(fixed.send(records).ids(Outcome.DELIVERED)) == {r.record_id for r in records}
    finally:
        fixed.close()
    arrived = [event_id_of(m) for m in rsyslog.wait_for({r.event_id for r in records})]
    assert sorted(arrived, key=str) == sorted((r.event_id for r in records), key=str)


@pytest.mark.rsyslog
def test_relp_over_tls_name_auth_admits_only_a_client_with_a_permitted_certificate(
    rsyslog: Rsyslog, make_record: MakeRecord, tmp_path: Path
) -> None:
    other = Certs.generate(tmp_path / "other-ca")  # same client name, issued by a CA rsyslog does not trust
    refused = [
        relp_tls_sink(rsyslog, "relp_mtls"),  # no client certificate
        relp_tls_sink(rsyslog, "relp_mtls", cert_file=str(other.client_cert), key_file=str(other.client_key)),
        relp_tls_sink(rsyslog, "relp_other_peer", **with_client_cert(rsyslog)),  # valid, but not a permitted name
    ]
    for client in refused:
        record = make_record()
        with pytest.raises(SinkUnavailable, match="client certificate refused") as caught:
            client.send([record])
        client.close()
        assert caught.value.alert
        assert caught.value.reason.startswith("relp+tls 127.0.0.1:")
        assert rsyslog.wait_for({record.event_id}, timeout=0.5) == []

    admitted = relp_tls_sink(rsyslog, "relp_mtls", **with_client_cert(rsyslog))
    record = make_record()
    try:
        assert admitted.send([record]).ids(Outcome.DELIVERED) == [record.record_id]
    finally:
        admitted.close()
    (message,) = rsyslog.wait_for({record.event_id})
    assert message["input"] == "kt_relp_mtls"


@pytest.mark.rsyslog
def test_relp_over_tls_loses_nothing_when_rsyslog_restarts_mid_batch(
    private_rsyslog: Rsyslog, make_record: MakeRecord
) -> None:
    siem = relp_tls_sink(private_rsyslog, "relp_mtls", window=16, **with_client_cert(private_rsyslog))
    sent: list[AuditRecord] = []
    try:
        first = [make_record() for _ in range(20)]
        sent += first
        assert set(siem.send(first).ids(Outcome.DELIVERED)) == {r.record_id for r in first}

        private_rsyslog.stop()
        down = [make_record() for _ in range(10)]
        sent += down
        with pytest.raises(SinkUnavailable):
            siem.send(down)

        private_rsyslog.start()  # a new TLS session, client certificate and all
        assert set(siem.send(down).ids(Outcome.DELIVERED)) == {r.record_id for r in down}

        # Restart while a large batch is in flight: what was not acknowledged comes back RETRY and is re-sent.
        sent += send_across_a_restart(siem, private_rsyslog, make_record)
    finally:
        siem.close()

    arrived = {event_id_of(m) for m in private_rsyslog.wait_for({r.event_id for r in sent}, timeout=10)}
    missing = {r.event_id for r in sent} - arrived
    assert not missing, f"{len(missing)} acknowledged-or-retried records never reached rsyslog"


# --- configuration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        pytest.param({"transport": "tcp", "tls": True}, 'sinks.siem.tls: applies to transport = "relp" only', id="tcp"),
        pytest.param(
            {"transport": "relp", "ca_file": "/ca.pem"},
            'sinks.siem.ca_file: applies to transport = "tls", or "relp" with tls = true, only',
            id="relp-without-tls",
        ),
        pytest.param(
            {"transport": "relp", "tls": True, "key_file": "/k.pem"},
            "sinks.siem.key_file: needs cert_file (the client certificate)",
            id="key-without-cert",
        ),
        pytest.param({"transport": "relp", "tls": "yes"}, "sinks.siem.tls: expected true or false", id="not-a-boolean"),
    ],
)
def test_relp_tls_option_problems_read_one_line_each(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sink(host="h", **options)
    (only,) = caught.value.problems
    assert only.startswith(problem)
    assert "\n" not in only


def test_relp_tls_client_certificate_without_its_key_is_a_config_problem(certs: Certs) -> None:
    with pytest.raises(ConfigError) as caught:
        sink(host="h", transport="relp", tls=True, ca_file=str(certs.ca), cert_file=str(certs.client_cert))
    (only,) = caught.value.problems
    assert only.startswith("sinks.siem.cert_file: cannot load the client certificate with its key (no key_file")


def test_relp_tls_is_off_by_default_and_reasons_say_relp_tls(certs: Certs) -> None:
    plain = sink(host="h", transport="relp").transport
    secured = sink(host="h", transport="relp", tls=True, ca_file=str(certs.ca)).transport
    assert isinstance(plain, RelpTransport)
    assert isinstance(secured, RelpTransport)
    assert plain.stream.tls is None
    assert secured.stream.tls is not None
    assert (plain.stream.where, secured.stream.where) == ("relp h:2514", "relp+tls h:2514")
