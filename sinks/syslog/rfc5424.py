"""RFC 5424 rendering, pure: an audit record -> one syslog message, cut between UTF-8 characters to fit a size."""

from __future__ import annotations

import json
from dataclasses import dataclass

from events.records import AuditRecord
from events.times import utc_or_none

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

# OCSF severity_id (0 Unknown .. 6 Fatal) to syslog severity (0 emerg .. 7 debug). An unknown severity is a notice:
# unknown events are kept on purpose and deserve a look.
SYSLOG_SEVERITY: dict[int, int] = {0: 5, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1}

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


class MessageTooLarge(ValueError):
    """Header and structured data alone exceed `max_message`: the record cannot be sent as configured."""


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
    utc = utc_or_none(timestamp)
    if utc is None:
        return NIL
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
    whole = render_head(record, header, structured_data(record, header.sd_id)) + b" " + body
    if len(whole) <= max_size:
        return whole
    cut_head = render_head(record, header, structured_data(record, header.sd_id, truncated_from=len(body))) + b" "
    room = max_size - len(cut_head)
    if room < len(TRUNCATION_MARK):
        raise MessageTooLarge(f"header and structured data alone exceed max_message ({max_size} octets)")
    return cut_head + truncate_utf8(body, room, TRUNCATION_MARK)


def render_head(record: AuditRecord, header: Header, sd: str) -> bytes:
    """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID SD`: what precedes MSG in every message, RFC 5424 or CEF."""
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
