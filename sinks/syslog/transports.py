"""Syslog transports (UDP, TCP, TLS): each sends a list of messages and says, per message, whether it was delivered.

`deliver` returns, per message, None (delivered) or why it was not; failing to connect raises SinkUnavailable: the
whole batch shares that fate. `classify` is the one place that turns a transport failure into the error the deliver
job reads; the RELP client (`sinks.syslog.relp`) uses it and `Stream` too.
"""

from __future__ import annotations

import contextlib
import fcntl
import select
import socket
import ssl
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sinks.errors import SinkUnavailable

Framing = Literal["octet", "newline"]

# TLS 1.3 finishes the client's handshake before the server has checked the client certificate; a server that
# rejects it closes right after. Waiting this long (once per new connection) turns that into a connect error
# instead of a batch written into a connection that is already being torn down.
_TLS13_CONFIRM_SECONDS = 0.2
_DRAIN_POLL_SECONDS = 0.002


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


class Stream:
    """A TCP connection, optionally TLS, that is reused until the peer closes it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        tls: ssl.SSLContext | None,
        server_name: str | None,
        scheme: str | None = None,
    ) -> None:
        scheme = scheme or ("tls" if tls is not None else "tcp")
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
                    _confirm_tls13(secured, self.timeout, self.where)
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


def _confirm_tls13(sock: socket.socket, timeout: float, where: str) -> None:
    readable, _, _ = select.select([sock], [], [], min(timeout, _TLS13_CONFIRM_SECONDS))
    if readable and not peer_open(sock, timeout):
        sock.close()
        raise SinkUnavailable(
            f"{where}: TLS peer closed the connection right after the handshake (client certificate refused?)",
            alert=True,
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


def frame(message: bytes, framing: Framing) -> bytes:
    """RFC 6587 framing for stream transports: `LEN SP MSG` (octet counting) or `MSG LF` (non-transparent)."""
    if framing == "octet":
        return b"%d %s" % (len(message), message)
    return message.replace(b"\n", b" ") + b"\n"


class StreamTransport:
    """Framed messages over TCP or TLS: delivered once the peer's kernel acknowledged them and it is still open."""

    def __init__(self, stream: Stream, framing: Framing) -> None:
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
