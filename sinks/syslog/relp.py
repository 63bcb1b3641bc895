"""The RELP client (rsyslog's Reliable Event Logging Protocol): the one syslog transport with acknowledgements.

There is no maintained Python RELP client (`relppy` is server-only, `pyrelp` was last released in 2014), so the client
side of the protocol is written here; it is small (open / syslog / close commands, txnr, a window of unacknowledged
frames). A record is delivered when the server answered `rsp 200` for its transaction number.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from events.version import VERSION
from sinks.errors import SinkUnavailable
from sinks.syslog.transports import Stream, classify

# RELP client (https://github.com/rsyslog/librelp/blob/master/doc/relp.html): frames are
# `TXNR SP COMMAND SP DATALEN [SP DATA] LF`; the client opens with an offer, sends `syslog` commands, and the server
# answers each with `rsp` carrying the same txnr and "200 OK" (or an error). The server may send `serverclose`.


class RelpError(Exception):
    """The RELP peer broke the protocol, refused the session, or closed it."""


class RelpClosed(RelpError):
    """The RELP peer closed the connection or sent `serverclose`."""


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

    def __init__(self, stream: Stream, *, window: int = 128) -> None:
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
                raise RelpClosed("RELP server closed the connection")
            self._buffer += chunk
        return frames

    def _session(self) -> socket.socket:
        sock, new = self.stream.connect()
        if not new:
            return sock
        self._buffer.clear()
        self._txnr = 0
        offer = f"relp_version=0\nrelp_software=keytrail,{VERSION}\ncommands=syslog".encode()
        try:
            txnr = self._next_txnr()
            sock.sendall(encode_relp(txnr, b"open", offer))
            answer = self._read_frames(sock)[0]
            if answer.command == b"serverclose":
                raise RelpClosed("RELP server closed the session before answering open")
            if answer.command != b"rsp" or answer.txnr != txnr or not answer.data.startswith(b"200"):
                raise RelpError(f"RELP server refused the session: {answer.data[:80]!r}")
            if b"syslog" not in _relp_offers(answer.data).get(b"commands", b"").split(b","):
                raise RelpError("RELP server does not offer the syslog command")
        except (OSError, RelpError) as exc:
            self.stream.close()
            error = classify(exc, self.stream.where)
            if self.stream.tls is not None and isinstance(exc, RelpClosed | ConnectionError | ssl.SSLError):
                # Under TLS 1.3 a server that refuses our client certificate (none, untrusted, or a name it does not
                # permit) says so only after our handshake returned: the session then ends before `open` is answered.
                raise SinkUnavailable(f"{error.reason} (client certificate refused?)", alert=True) from None
            raise error from None
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
