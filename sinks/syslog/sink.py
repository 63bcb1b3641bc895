"""The syslog sink: renders each record (RFC 5424 or CEF), hands the batch to one transport, reports per record.

What "delivered" means per transport, and the message layout, are in the package docstring (`sinks.syslog`).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Literal, Self, cast

from config.settings import SinkSettings
from events.records import AuditRecord
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkUnavailable
from sinks.options import Options
from sinks.syslog.cef import render_cef_message
from sinks.syslog.relp import RelpTransport
from sinks.syslog.rfc5424 import (
    DEFAULT_SD_ID,
    FACILITIES,
    NIL,
    RSYSLOG_DEFAULT_MAX,
    UDP_DEFAULT_MAX,
    Header,
    MessageTooLarge,
    printusascii,
    render_rfc5424,
)
from sinks.syslog.transports import (
    Framing,
    MessageTransport,
    Stream,
    StreamTransport,
    TlsFiles,
    UdpTransport,
    tls_context,
)

Transport = Literal["udp", "tcp", "tls", "relp"]
Format = Literal["rfc5424", "cef"]

DEFAULT_PORTS: dict[str, int] = {"udp": 514, "tcp": 514, "tls": 6514, "relp": 2514}


class SyslogSink:
    """Records as syslog messages to one collector; see the module docstring for what each transport guarantees.

    Options (with defaults): `host` (required), `port` (514 udp/tcp, 6514 tls, 2514 relp), `transport` ("tcp"),
    `format` ("rfc5424" | "cef"), `framing` ("octet" | "newline", tcp/tls only), `facility` ("authpriv"; a name or
    0-23), `app_name` ("keytrail"), `hostname` (this machine's), `sd_id` ("keytrail@32473"), `max_message` (2048 udp,
    8096 otherwise), `timeout` (10 s), `window` (relp: 128 unacknowledged frames), `tls` (relp only: false; true
    wraps the RELP session in TLS, as rsyslog's imrelp `tls="on"`), and for tls, or relp with tls, `ca_file`,
    `cert_file` (client certificate; `key_file` unless the key is in the same PEM), `key_file`, `server_name`
    (default: host).
    """

    def __init__(
        self,
        name: str,
        transport: MessageTransport,
        *,
        header: Header | None = None,
        message_format: Format = "rfc5424",
        max_message: int = RSYSLOG_DEFAULT_MAX,
        framing: Framing = "octet",
    ) -> None:
        self.name = name
        self.transport = transport
        self.header = header or Header()
        self.message_format: Format = message_format
        self.max_message = max_message
        self.framing: Framing = framing
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SinkSettings) -> Self:
        opts = Options(settings)
        host = opts.string("host")
        transport = opts.string("transport", "tcp", choices=("udp", "tcp", "tls", "relp"))
        kind = cast(Transport, transport) if transport in DEFAULT_PORTS else "tcp"
        port = opts.integer("port", DEFAULT_PORTS[kind], minimum=1, maximum=65535)
        message_format: Format = (
            "cef" if opts.string("format", "rfc5424", choices=("rfc5424", "cef")) == "cef" else "rfc5424"
        )
        framing: Framing = (
            "newline" if opts.string("framing", "octet", choices=("octet", "newline")) == "newline" else "octet"
        )
        if settings.options.get("framing") is not None and kind not in ("tcp", "tls"):
            opts.problems.append(f"sinks.{settings.name}.framing: applies to tcp and tls only")
        facility = _facility(opts)
        app_name = opts.string("app_name", "keytrail")
        hostname = opts.string("hostname", socket.gethostname())
        sd_id = opts.string("sd_id", DEFAULT_SD_ID)
        for key, value, limit in (("app_name", app_name, 48), ("hostname", hostname, 255)):
            if printusascii(value, limit) != value or value == NIL:
                opts.problems.append(f"sinks.{settings.name}.{key}: 1-{limit} printable ASCII characters, no spaces")
        if not _valid_sd_name(sd_id.partition("@")[0]) or ("@" in sd_id and not sd_id.partition("@")[2].isdigit()):
            opts.problems.append(
                f"sinks.{settings.name}.sd_id: a name, or name@<enterprise number>, like keytrail@32473"
            )
        default_max = UDP_DEFAULT_MAX if kind == "udp" else RSYSLOG_DEFAULT_MAX
        max_message = opts.integer("max_message", default_max, minimum=480, maximum=65507)
        timeout = opts.number("timeout", 10.0, minimum=0.1)
        window = opts.integer("window", 128, minimum=1, maximum=10_000)
        if kind != "relp" and settings.options.get("window") is not None:
            opts.problems.append(f'sinks.{settings.name}.window: applies to transport = "relp" only')
        server_name = opts.optional_string("server_name")
        context = _tls_options(opts, kind)
        opts.finish()

        built: MessageTransport
        if kind == "udp":
            built = UdpTransport(host, port)
        elif kind == "relp":
            scheme = "relp+tls" if context is not None else "relp"
            stream = Stream(host, port, timeout=timeout, tls=context, server_name=server_name, scheme=scheme)
            built = RelpTransport(stream, window=window)
        else:
            built = StreamTransport(Stream(host, port, timeout=timeout, tls=context, server_name=server_name), framing)
        header = Header(facility=facility, hostname=hostname, app_name=app_name, sd_id=sd_id)
        return cls(
            settings.name, built, header=header, message_format=message_format, max_message=max_message, framing=framing
        )

    def render(self, record: AuditRecord) -> bytes:
        if self.message_format == "cef":
            return render_cef_message(record, self.header, max_size=self.max_message)
        return render_rfc5424(record, self.header, max_size=self.max_message)

    def send(self, records: Sequence[AuditRecord]) -> DeliveryReport:
        report = DeliveryReport()
        ready: list[tuple[AuditRecord, bytes]] = []
        for record in records:
            try:
                ready.append((record, self.render(record)))
            except MessageTooLarge as exc:
                report.set(record.record_id, Outcome.REJECTED, str(exc))
        if not ready:
            return report
        with self._lock:
            try:
                results = self.transport.deliver([message for _, message in ready])
            except SinkUnavailable as exc:
                if not report.outcomes:
                    raise
                results = [exc.reason] * len(ready)  # keep the rejections this report already holds
        if all(reason is not None for reason in results) and not report.outcomes:
            raise SinkUnavailable(results[0] or "not delivered")
        for (record, _), reason in zip(ready, results, strict=True):
            report.set(record.record_id, Outcome.DELIVERED if reason is None else Outcome.RETRY, reason)
        return report

    def close(self) -> None:
        with self._lock:
            self.transport.close()


def _facility(opts: Options) -> int:
    raw = opts.settings.options.get("facility")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return opts.integer("facility", FACILITIES["authpriv"], minimum=0, maximum=23)
    name = opts.string("facility", "authpriv", choices=tuple(FACILITIES))
    return FACILITIES.get(name, FACILITIES["authpriv"])


def _tls_options(opts: Options, kind: Transport) -> ssl.SSLContext | None:
    """The client TLS context for `tls`, or for `relp` with `tls = true`; None for plain transports. Problems with
    the TLS options go to `opts.problems`, one line each."""
    name, given = opts.settings.name, opts.settings.options
    files = TlsFiles(
        opts.optional_string("ca_file"), opts.optional_string("cert_file"), opts.optional_string("key_file")
    )
    relp_tls = opts.boolean("tls", False)
    if kind != "relp" and given.get("tls") is not None:
        opts.problems.append(f'sinks.{name}.tls: applies to transport = "relp" only')
    if kind != "tls" and not (kind == "relp" and relp_tls):
        for key in ("ca_file", "cert_file", "key_file", "server_name"):
            if given.get(key) is not None:
                opts.problems.append(
                    f'sinks.{name}.{key}: applies to transport = "tls", or "relp" with tls = true, only'
                )
        return None
    if files.key_file and not files.cert_file:
        opts.problems.append(f"sinks.{name}.key_file: needs cert_file (the client certificate)")
    if opts.problems:
        return None
    try:
        return tls_context(files)
    except (OSError, ssl.SSLError) as exc:
        opts.problems.append(_tls_files_problem(name, files, exc))
        return None


def _tls_files_problem(sink: str, files: TlsFiles, exc: OSError | ssl.SSLError) -> str:
    if files.cert_file and not files.key_file and isinstance(exc, ssl.SSLError):
        return f"sinks.{sink}.cert_file: cannot load the client certificate with its key (no key_file given): {exc}"
    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"sinks.{sink}: cannot load TLS files: {what}"


def _valid_sd_name(name: str) -> bool:
    return 1 <= len(name) <= 32 and all(33 <= ord(ch) <= 126 and ch not in '= ]"@' for ch in name)
