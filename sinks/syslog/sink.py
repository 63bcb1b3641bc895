"""The `syslog` sink: RFC 5424 or CEF messages over UDP, TCP, TLS or RELP to any syslog collector.

What "delivered" means depends on the transport, and the transport is the operator's choice:

- `relp` (rsyslog's Reliable Event Logging Protocol): a record is delivered when the server answered `rsp 200` for
  its transaction number. This is the only transport with application-level acknowledgements. There is no maintained
  Python RELP client (`relppy` is server-only, `pyrelp` was last released in 2014), so the client side of the protocol
  is written here; it is small (open / syslog / close commands, txnr, a window of unacknowledged frames).
- `tcp` / `tls` (RFC 6587 / RFC 5425): a successful write() only means the bytes reached our kernel. Before counting
  a batch as delivered we wait until the peer's TCP stack has acknowledged every byte (Linux `SIOCOUTQ` reads 0) and
  check that the peer has not closed the connection meanwhile. A peer that reads and then drops data can still lose
  it: use RELP when that matters.
- `udp` (RFC 5426): a datagram handed to the kernel counts as delivered. Lossy by definition; opt in knowingly.

Whatever was not confirmed is reported RETRY, so the deliver job's RQ retry re-sends it (duplicates are possible and
carry the same `event_id`). Connections are kept between `send` calls; before each use we check the peer has not
closed the connection (a restarted rsyslog closes it), and reconnect if it has.

Message layout, `format = "rfc5424"` (default):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [keytrail@32473 event_id=".." tenant=".." topic=".."
    entity_type=".." fingerprint=".."] BOM{compact JSON of the whole audit record}

PRI = facility * 8 + severity; facility defaults to `authpriv` (10: security messages that Debian's rsyslog keeps
out of world-readable logs), severity is mapped from the record's OCSF severity_id. MSGID is the topic.
`format = "cef"` puts the CEF line (see `sinks.cef`) in MSG, with no structured data and no BOM, since CEF collectors
look for `CEF:` right after the header.

Size: a message never exceeds `max_message` octets (default 2048 on UDP, the size RFC 5426 says every receiver should
accept; 8096 on TCP, TLS and RELP, the limit of an rsyslog left at its defaults, see RSYSLOG_DEFAULT_MAX). A receiver
that cuts a longer message itself cuts inside a character, loses our mark, and on a stream turns the rest into a
second message with no event_id; so we cut first. A longer message keeps its header and structured data and has its
MSG cut at a UTF-8 boundary, ending in ` [truncated]`; the structured data then says `truncated="<original MSG
octets>"`. A CEF line is cut the same way but keeps at least its header and `externalId`, and ends in
`cn1Label=truncated cn1=<original line octets>` (see `sinks.cef`). Newline framing cannot carry a line feed, so with
`framing = "newline"` any LF in a message becomes a space (our JSON never contains one; only unusual topics or tenant
names in structured data could).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import select
import socket
import ssl
import termios
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, Self, cast

from config.settings import SinkSettings
from events.records import AuditRecord
from events.version import VERSION
from sinks.base import DeliveryReport, Outcome
from sinks.cef import cef_truncation_mark, identifying_prefix, render_cef
from sinks.errors import SinkUnavailable
from sinks.options import Options

Transport = Literal["udp", "tcp", "tls", "relp"]
Framing = Literal["octet", "newline"]
Format = Literal["rfc5424", "cef"]

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

# OCSF severity_id (0 Unknown .. 6 Fatal) to syslog severity (0 emerg .. 7 debug). An unknown severity is a notice:
# unknown events are kept on purpose and deserve a look.
SYSLOG_SEVERITY: dict[int, int] = {0: 5, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1}

DEFAULT_PORTS: dict[str, int] = {"udp": 514, "tcp": 514, "tls": 6514, "relp": 2514}
DEFAULT_SD_ID = "keytrail@32473"  # 32473 is the documentation enterprise number (RFC 5612); set your own PEN
NIL = "-"
BOM = b"\xef\xbb\xbf"
TRUNCATION_MARK = b" [truncated]"

# rsyslog's default maximum message size (8.2302: "max msg size is 8096"), measured here: a message of 8096 octets
# arrives whole on imudp, imtcp and imptcp (octet-counted and LF-framed), TLS (gtls) and imrelp; 8097 octets are cut
# on every one of them. Only the syslog message counts, not the octet count or LF of its framing. No margin: the
# boundary is exact on every input, and tests/sinks/test_syslog_size.py pins it against the real daemon.
RSYSLOG_DEFAULT_MAX = 8096
UDP_DEFAULT_MAX = 2048

# TLS 1.3 finishes the client's handshake before the server has checked the client certificate; a server that
# rejects it closes right after. Waiting this long (once per new connection) turns that into a connect error
# instead of a batch written into a connection that is already being torn down.
_TLS13_CONFIRM_SECONDS = 0.2
_DRAIN_POLL_SECONDS = 0.002


class MessageTooLarge(ValueError):
    """Header and structured data alone exceed `max_message`: the record cannot be sent as configured."""


# ---------------------------------------------------------------------------------------------------------------
# Rendering: record -> message bytes, pure


@dataclass(frozen=True, slots=True)
class Header:
    """What every message of one sink shares."""

    facility: int = FACILITIES["authpriv"]
    hostname: str = NIL
    app_name: str = "keytrail"
    sd_id: str = DEFAULT_SD_ID


def printusascii(value: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, MSGID): PRINTUSASCII only, at most `limit` characters, `-` when empty."""
    cleaned = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in value)[:limit]
    return cleaned or NIL


def escape_sd_value(value: str) -> str:
    """SD-PARAM value escaping (RFC 5424 §6.3.3): `"`, `\\` and `]` get a backslash; nothing else changes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc3339(timestamp: str) -> str:
    """The record's time as an RFC 5424 TIMESTAMP in UTC (`Z`, at most 6 fraction digits), or `-` if unparseable."""
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError:
        return NIL
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    utc = parsed.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def structured_data(record: AuditRecord, sd_id: str, *, truncated_from: int | None = None) -> str:
    params: list[tuple[str, str | None]] = [
        ("event_id", record.event_id),
        ("tenant", record.tenant),
        ("topic", record.topic),
        ("entity_type", str(record.entity.type)),
        ("fingerprint", record.entity.fingerprint),
        ("truncated", None if truncated_from is None else str(truncated_from)),
    ]
    rendered = "".join(f' {name}="{escape_sd_value(value)}"' for name, value in params if value is not None)
    return f"[{sd_id}{rendered}]"


def record_json(record: AuditRecord) -> bytes:
    return json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def render_rfc5424(record: AuditRecord, header: Header, *, max_size: int = RSYSLOG_DEFAULT_MAX) -> bytes:
    """One RFC 5424 message: header, our structured data, BOM + the record as compact JSON (cut to fit `max_size`)."""
    body = BOM + record_json(record)
    whole = _head(record, header, structured_data(record, header.sd_id)) + b" " + body
    if len(whole) <= max_size:
        return whole
    cut_head = _head(record, header, structured_data(record, header.sd_id, truncated_from=len(body))) + b" "
    room = max_size - len(cut_head)
    if room < len(TRUNCATION_MARK):
        raise MessageTooLarge(f"header and structured data alone exceed max_message ({max_size} octets)")
    return cut_head + truncate_utf8(body, room, TRUNCATION_MARK)


def render_cef_message(
    record: AuditRecord, header: Header, *, max_size: int = RSYSLOG_DEFAULT_MAX, version: str = ""
) -> bytes:
    """The CEF line carried in an RFC 5424 message without structured data; a cut line is marked in its extension."""
    version = version or keytrail_version()
    head = _head(record, header, NIL) + b" "
    line = render_cef(record, version=version).encode()
    if len(head) + len(line) <= max_size:
        return head + line
    mark = cef_truncation_mark(len(line)).encode()
    cut = _without_dangling_backslash(cut_utf8(line, max(0, max_size - len(head) - len(mark))))
    if len(cut) < len(identifying_prefix(record, version=version).encode()):
        raise MessageTooLarge(f"CEF header and externalId alone exceed max_message ({max_size} octets)")
    return head + cut + mark


def _head(record: AuditRecord, header: Header, sd: str) -> bytes:
    severity = SYSLOG_SEVERITY.get(int(record.severity_id), 5)
    pri = header.facility * 8 + severity
    msgid = printusascii(record.topic, 32)
    return f"<{pri}>1 {rfc3339(record.time)} {header.hostname} {header.app_name} {NIL} {msgid} {sd}".encode()


def cut_utf8(data: bytes, limit: int) -> bytes:
    """The longest prefix of UTF-8 `data` of at most `limit` octets that ends between two characters."""
    if len(data) <= limit:
        return data
    end = max(limit, 0)
    while end > 0 and data[end] & 0xC0 == 0x80:  # a continuation byte: the cut would split its character
        end -= 1
    return data[:end]


def truncate_utf8(data: bytes, limit: int, mark: bytes) -> bytes:
    """UTF-8 `data` unchanged if it fits in `limit` octets; else as much of it as fits before `mark`, cut between
    characters, then `mark`."""
    if len(data) <= limit:
        return data
    if limit < len(mark):
        raise ValueError(f"a limit of {limit} octets leaves no room for the {len(mark)}-octet truncation mark")
    return cut_utf8(data, limit - len(mark)) + mark


def _without_dangling_backslash(cut: bytes) -> bytes:
    """A CEF value cut after an odd run of backslashes would escape our marker's leading space."""
    run = len(cut) - len(cut.rstrip(b"\\"))
    return cut[:-1] if run % 2 else cut


def frame(message: bytes, framing: Framing) -> bytes:
    """RFC 6587 framing for stream transports: `LEN SP MSG` (octet counting) or `MSG LF` (non-transparent)."""
    if framing == "octet":
        return b"%d %s" % (len(message), message)
    return message.replace(b"\n", b" ") + b"\n"


def keytrail_version() -> str:
    return VERSION


# ---------------------------------------------------------------------------------------------------------------
# Classification: one place that turns a transport failure into the error the deliver job reads


def classify(exc: BaseException, where: str = "") -> SinkUnavailable:
    """Every syslog transport failure is worth a retry; those an operator must fix also raise an alert."""
    if isinstance(exc, SinkUnavailable):
        return exc
    alert = False
    if isinstance(exc, ssl.SSLCertVerificationError):
        text, alert = f"TLS certificate verification failed: {exc.verify_message}", True
    elif isinstance(exc, ssl.SSLError):
        text = f"TLS error: {exc.reason or type(exc).__name__}"
    elif isinstance(exc, socket.gaierror):
        text, alert = f"cannot resolve host: {exc.strerror}", True
    elif isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, OSError):
        text = exc.strerror or str(exc) or type(exc).__name__
    else:
        text = str(exc) or type(exc).__name__
    return SinkUnavailable(f"{where}: {text}" if where else text, alert=alert)


# ---------------------------------------------------------------------------------------------------------------
# Transports: each sends a list of messages and returns, per message, None (delivered) or why it was not.
# Failing to connect raises SinkUnavailable: the whole batch shares that fate.


class MessageTransport(Protocol):
    def deliver(self, messages: Sequence[bytes]) -> list[str | None]: ...

    def close(self) -> None: ...


class UdpTransport:
    """One datagram per message (RFC 5426) on a connected socket, so ICMP port-unreachable surfaces as an error."""

    def __init__(self, host: str, port: int) -> None:
        self.where = f"udp {host}:{port}"
        self._address = (host, port)
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            try:
                family, kind, proto, _, address = socket.getaddrinfo(*self._address, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family, kind, proto)
                sock.connect(address)
            except OSError as exc:
                raise classify(exc, self.where) from None
            self._sock = sock
        return self._sock

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        sock = self._socket()
        results: list[str | None] = []
        for index, message in enumerate(messages):
            try:
                sock.send(message)
            except OSError as exc:
                self.close()
                reason = classify(exc, self.where).reason
                return results + [reason] * (len(messages) - index)
            results.append(None)
        return results

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Stream:
    """A TCP connection, optionally TLS, that is reused until the peer closes it."""

    def __init__(
        self, host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None, server_name: str | None
    ) -> None:
        scheme = "tls" if tls is not None else "tcp"
        self.where = f"{scheme} {host}:{port}"
        self.host = host
        self.port = port
        self.timeout = timeout
        self.tls = tls
        self.server_name = server_name or host
        self.sock: socket.socket | None = None

    def connect(self) -> tuple[socket.socket, bool]:
        """The open connection (reconnecting if the peer closed it); the flag says whether it is new."""
        if self.sock is not None and peer_open(self.sock, self.timeout):
            return self.sock, False
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                secured = self.tls.wrap_socket(sock, server_hostname=self.server_name)
                if secured.version() == "TLSv1.3":
                    _confirm_tls13(secured, self.timeout)
                sock = secured
        except OSError as exc:
            raise classify(exc, self.where) from None
        self.sock = sock
        return sock, True

    def close(self) -> None:
        if self.sock is not None:
            if isinstance(self.sock, ssl.SSLSocket):
                # close_notify, so rsyslog does not log "connection non-properly terminated" for every reconnect.
                with contextlib.suppress(OSError, ValueError):
                    self.sock.settimeout(min(self.timeout, 1.0))
                    self.sock.unwrap()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def peer_open(sock: socket.socket, timeout: float) -> bool:
    """False when the peer has closed (or reset) the connection. A syslog or RELP peer sends nothing unprompted
    except a RELP `serverclose`, so anything readable right now also means the connection is going away."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)
    return False


def _confirm_tls13(sock: socket.socket, timeout: float) -> None:
    readable, _, _ = select.select([sock], [], [], min(timeout, _TLS13_CONFIRM_SECONDS))
    if readable and not peer_open(sock, timeout):
        sock.close()
        raise SinkUnavailable(
            "TLS peer closed the connection right after the handshake (client certificate refused?)", alert=True
        )


def wait_drained(sock: socket.socket, timeout: float) -> None:
    """Block until the peer's TCP stack has acknowledged every byte we wrote (Linux SIOCOUTQ == 0)."""
    request = getattr(termios, "TIOCOUTQ", None)
    if request is None:  # not Linux: the write is all we can know
        return
    deadline = time.monotonic() + timeout
    buffer = bytearray(4)
    while True:
        fcntl.ioctl(sock.fileno(), request, buffer)
        if int.from_bytes(buffer, "little") == 0:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError("peer did not acknowledge the data")
        time.sleep(_DRAIN_POLL_SECONDS)


class StreamTransport:
    """Framed messages over TCP or TLS: delivered once the peer's kernel acknowledged them and it is still open."""

    def __init__(self, stream: _Stream, framing: Framing) -> None:
        self.stream = stream
        self.framing = framing

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        sock, _ = self.stream.connect()
        payload = b"".join(frame(message, self.framing) for message in messages)
        try:
            sock.sendall(payload)
            wait_drained(sock, self.stream.timeout)
            if not peer_open(sock, self.stream.timeout):
                raise ConnectionResetError("peer closed the connection")
        except OSError as exc:
            self.stream.close()
            return [classify(exc, self.stream.where).reason] * len(messages)
        return [None] * len(messages)

    def close(self) -> None:
        self.stream.close()


# ---------------------------------------------------------------------------------------------------------------
# RELP client (https://github.com/rsyslog/librelp/blob/master/doc/relp.html): frames are
# `TXNR SP COMMAND SP DATALEN [SP DATA] LF`; the client opens with an offer, sends `syslog` commands, and the server
# answers each with `rsp` carrying the same txnr and "200 OK" (or an error). The server may send `serverclose`.


class RelpError(Exception):
    """The RELP peer broke the protocol, refused the session, or closed it."""


@dataclass(frozen=True, slots=True)
class RelpFrame:
    txnr: int
    command: bytes
    data: bytes


_RELP_MAX_TXNR = 999_999_999
_RELP_MAX_HEADER = 9 + 1 + 32 + 1 + 9 + 1
_RELP_MAX_DATA = 128 * 1024


def encode_relp(txnr: int, command: bytes, data: bytes = b"") -> bytes:
    if data:
        return b"%d %s %d %s\n" % (txnr, command, len(data), data)
    return b"%d %s 0\n" % (txnr, command)


def parse_relp(buffer: bytearray) -> RelpFrame | None:
    """Take one complete frame off the front of `buffer`, or return None if more bytes are needed."""
    first = buffer.find(b" ")
    second = buffer.find(b" ", first + 1) if first >= 0 else -1
    if second < 0:
        if len(buffer) > _RELP_MAX_HEADER:
            raise RelpError("malformed RELP frame header")
        return None
    txnr_text, command = bytes(buffer[:first]), bytes(buffer[first + 1 : second])
    end = second + 1
    while end < len(buffer) and buffer[end : end + 1].isdigit():
        end += 1
    if end == len(buffer):
        if end - second > 10:
            raise RelpError("malformed RELP data length")
        return None
    if not txnr_text.isdigit() or not command.isalpha() or end == second + 1:
        raise RelpError("malformed RELP frame header")
    length = int(buffer[second + 1 : end])
    if length > _RELP_MAX_DATA:
        raise RelpError("RELP frame too large")
    if length == 0:
        if buffer[end : end + 1] != b"\n":
            raise RelpError("malformed RELP frame trailer")
        del buffer[: end + 1]
        return RelpFrame(int(txnr_text), command, b"")
    total = end + 1 + length + 1
    if len(buffer) < total:
        return None
    if buffer[end : end + 1] != b" " or buffer[total - 1 : total] != b"\n":
        raise RelpError("malformed RELP frame")
    data = bytes(buffer[end + 1 : total - 1])
    del buffer[:total]
    return RelpFrame(int(txnr_text), command, data)


class RelpTransport:
    """Pipelined `syslog` commands with at most `window` unacknowledged; delivered = answered `rsp 200`."""

    def __init__(self, stream: _Stream, *, window: int = 128) -> None:
        self.stream = stream
        self.window = window
        self._buffer = bytearray()
        self._txnr = 0

    def _next_txnr(self) -> int:
        self._txnr = self._txnr % _RELP_MAX_TXNR + 1
        return self._txnr

    def _read_frames(self, sock: socket.socket) -> list[RelpFrame]:
        """At least one frame, and every other complete one already received."""
        frames: list[RelpFrame] = []
        while not frames:
            while (parsed := parse_relp(self._buffer)) is not None:
                frames.append(parsed)
            if frames:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise RelpError("RELP server closed the connection")
            self._buffer += chunk
        return frames

    def _session(self) -> socket.socket:
        sock, new = self.stream.connect()
        if not new:
            return sock
        self._buffer.clear()
        self._txnr = 0
        offer = f"relp_version=0\nrelp_software=keytrail,{keytrail_version()}\ncommands=syslog".encode()
        try:
            txnr = self._next_txnr()
            sock.sendall(encode_relp(txnr, b"open", offer))
            answer = self._read_frames(sock)[0]
            if answer.command != b"rsp" or answer.txnr != txnr or not answer.data.startswith(b"200"):
                raise RelpError(f"RELP server refused the session: {answer.data[:80]!r}")
            if b"syslog" not in _relp_offers(answer.data).get(b"commands", b"").split(b","):
                raise RelpError("RELP server does not offer the syslog command")
        except (OSError, RelpError) as exc:
            self.stream.close()
            raise classify(exc, self.stream.where) from None
        return sock

    def deliver(self, messages: Sequence[bytes]) -> list[str | None]:
        sock = self._session()
        unacknowledged = "sent but not acknowledged by the RELP server"
        results: list[str | None] = [unacknowledged] * len(messages)
        pending: dict[int, int] = {}
        sent = 0
        try:
            while sent < len(messages) or pending:
                burst: list[bytes] = []
                while sent < len(messages) and len(pending) < self.window:
                    txnr = self._next_txnr()
                    pending[txnr] = sent
                    burst.append(encode_relp(txnr, b"syslog", messages[sent]))
                    sent += 1
                if burst:
                    sock.sendall(b"".join(burst))
                for answer in self._read_frames(sock):
                    if answer.command == b"serverclose":
                        raise RelpError("RELP server is closing the session")
                    if answer.command != b"rsp" or answer.txnr not in pending:
                        raise RelpError(f"unexpected RELP frame {answer.txnr} {answer.command!r}")
                    index = pending.pop(answer.txnr)
                    ok = answer.data.startswith(b"200")
                    results[index] = None if ok else f"RELP server answered {answer.data[:80]!r}"
        except (OSError, RelpError) as exc:
            self.stream.close()
            reason = f"{classify(exc, self.stream.where).reason}; not acknowledged"
            for index in [*pending.values(), *range(sent, len(messages))]:
                results[index] = reason
        return results

    def close(self) -> None:
        """Say goodbye politely (bounded by the timeout); the server answers `rsp` and closes."""
        sock = self.stream.sock
        if sock is not None:
            with contextlib.suppress(OSError, RelpError):
                sock.sendall(encode_relp(self._next_txnr(), b"close"))
                self._read_frames(sock)
        self.stream.close()


def _relp_offers(data: bytes) -> dict[bytes, bytes]:
    """`200 OK\\nrelp_version=0\\ncommands=syslog` -> {b"relp_version": b"0", b"commands": b"syslog"}."""
    offers: dict[bytes, bytes] = {}
    for line in data.split(b"\n")[1:]:
        name, _, value = line.partition(b"=")
        offers[name.strip()] = value.strip()
    return offers


# ---------------------------------------------------------------------------------------------------------------
# The sink


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """Verifying client context: the server certificate must chain to `ca_file` (else the system CAs) and match
    the server name; `cert_file` (+ `key_file`) is presented when the collector asks for a client certificate."""
    context = ssl.create_default_context(cafile=files.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert_file:
        context.load_cert_chain(files.cert_file, files.key_file)
    return context


class SyslogSink:
    """Records as syslog messages to one collector; see the module docstring for what each transport guarantees.

    Options (with defaults): `host` (required), `port` (514 udp/tcp, 6514 tls, 2514 relp), `transport` ("tcp"),
    `format` ("rfc5424" | "cef"), `framing` ("octet" | "newline", tcp/tls only), `facility` ("authpriv"; a name or
    0-23), `app_name` ("keytrail"), `hostname` (this machine's), `sd_id` ("keytrail@32473"), `max_message` (2048 udp,
    8096 otherwise), `timeout` (10 s), `window` (relp: 128 unacknowledged frames), and for tls `ca_file`,
    `cert_file`, `key_file`, `server_name` (default: host).
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
        files = TlsFiles(
            opts.optional_string("ca_file"), opts.optional_string("cert_file"), opts.optional_string("key_file")
        )
        server_name = opts.optional_string("server_name")
        if kind != "tls":
            for key in ("ca_file", "cert_file", "key_file", "server_name"):
                if settings.options.get(key) is not None:
                    opts.problems.append(f'sinks.{settings.name}.{key}: applies to transport = "tls" only')
        if kind != "relp" and settings.options.get("window") is not None:
            opts.problems.append(f'sinks.{settings.name}.window: applies to transport = "relp" only')
        context: ssl.SSLContext | None = None
        if kind == "tls" and not opts.problems:
            try:
                context = tls_context(files)
            except (OSError, ssl.SSLError) as exc:
                what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                opts.problems.append(f"sinks.{settings.name}: cannot load TLS files: {what}")
        opts.finish()

        built: MessageTransport
        if kind == "udp":
            built = UdpTransport(host, port)
        else:
            stream = _Stream(host, port, timeout=timeout, tls=context, server_name=server_name)
            built = RelpTransport(stream, window=window) if kind == "relp" else StreamTransport(stream, framing)
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


def _valid_sd_name(name: str) -> bool:
    return 1 <= len(name) <= 32 and all(33 <= ord(ch) <= 126 and ch not in '= ]"@' for ch in name)
