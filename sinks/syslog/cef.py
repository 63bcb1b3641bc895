"""CEF (ArcSight Common Event Format), pure: an audit record as the MSG of a syslog message when `format = "cef"`.

`CEF:0|keytrail|keytrail|<version>|<topic>|<name>|<severity 0-10>|<extension>`. Two escaping rules apply, and they
differ: header fields escape `\\` and `|`; extension values escape `\\`, `=` and line breaks (`\\n`, `\\r`) but not `|`.
Extension keys come from the CEF dictionary where one fits (`rt`, `externalId`, `act`, `suser`, `msg`); the rest use
the custom-string pairs `cs1`..`cs6` with their `csNLabel`:

    cs1 tenant · cs2 entityType · cs3 fingerprint · cs4 entityName · cs5 projectId · cs6 keyHint (prefix…last4)

A line cut to fit a syslog message ends in `cn1Label=truncated cn1=<octets of the whole line>`, the counterpart of the
`truncated` structured-data parameter of RFC 5424 messages; the cut always keeps the header, `rt` and `externalId`.
"""

from __future__ import annotations

from events.records import Activity, AuditRecord, Severity
from events.times import utc_or_none
from events.version import VERSION
from sinks.syslog.rfc5424 import NIL, RSYSLOG_DEFAULT_MAX, Header, MessageTooLarge, cut_utf8, render_head

VENDOR = "keytrail"
PRODUCT = "keytrail"

# OCSF severity_id (0 Unknown .. 6 Fatal) to CEF 0-10 (0-3 Low, 4-6 Medium, 7-8 High, 9-10 Very-High).
CEF_SEVERITY: dict[int, int] = {0: 0, 1: 1, 2: 3, 3: 5, 4: 8, 5: 9, 6: 10}

_ACTION: dict[Activity, str] = {
    Activity.CREATE: "create",
    Activity.READ: "read",
    Activity.UPDATE: "update",
    Activity.DELETE: "delete",
    Activity.OTHER: "other",
}

# CEF has no hard limit on most values, but collectors (ArcSight, QRadar) cut `msg` near 1023 and cs* near 4000.
_MAX_VALUE = 1023


def escape_header(value: str) -> str:
    """A header field: backslash first (so the escapes added for pipes are not doubled), then the pipe."""
    flat = value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return flat.replace("\\", "\\\\").replace("|", "\\|")


def escape_extension(value: str) -> str:
    """An extension value: backslash, equals sign and line breaks. Pipes stay as they are (the CEF rule)."""
    escaped = value[:_MAX_VALUE].replace("\\", "\\\\").replace("=", "\\=")
    return escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def epoch_millis(timestamp: str) -> int | None:
    """`rt` is milliseconds since the epoch; None when the record's time is not ISO 8601."""
    parsed = utc_or_none(timestamp)
    return None if parsed is None else int(parsed.timestamp() * 1000)


def event_name(record: AuditRecord) -> str:
    """A short human name for the header: "API Key created", "API Key firstUsed", "Project updated"."""
    verb = record.topic.rpartition(".")[2] or record.topic
    return f"{record.entity.type} {verb}"


def render_cef(record: AuditRecord, *, version: str) -> str:
    """The CEF line for one record (no syslog header; the syslog sink adds it)."""
    extension = " ".join(f"{key}={value}" for key, value in _extension(record))
    return f"{_header(record, version)}|{extension}"


def identifying_prefix(record: AuditRecord, *, version: str) -> str:
    """The start of the CEF line that says which event it is (header, `rt`, `externalId`): a cut line keeps it."""
    pairs = _extension(record)
    keys = [key for key, _ in pairs]
    end = keys.index("externalId") + 1 if "externalId" in keys else 0
    extension = " ".join(f"{key}={value}" for key, value in pairs[:end])
    return f"{_header(record, version)}|{extension}"


def cef_truncation_mark(original_octets: int) -> str:
    """Appended to a cut line. A pair of its own (the cut drops a dangling backslash first, so it cannot be escaped
    into the previous value); cn1 is a CEF dictionary number any collector maps."""
    return f" cn1Label=truncated cn1={original_octets}"


def _header(record: AuditRecord, version: str) -> str:
    severity = CEF_SEVERITY.get(int(record.severity_id), CEF_SEVERITY[Severity.UNKNOWN])
    return "|".join(
        [
            "CEF:0",
            escape_header(VENDOR),
            escape_header(PRODUCT),
            escape_header(version),
            escape_header(record.topic),
            escape_header(event_name(record)),
            str(severity),
        ]
    )


def _extension(record: AuditRecord) -> list[tuple[str, str]]:
    """The extension's key / escaped value pairs, in order: the identifying ones (`rt`, `externalId`) first."""
    entity = record.entity
    key_hint = f"{entity.prefix}…{entity.last4}" if entity.prefix or entity.last4 else None
    fields: list[tuple[str, str | None]] = [
        ("rt", _str_or_none(epoch_millis(record.time))),
        ("externalId", record.event_id),
        ("act", _ACTION.get(record.activity_id, "other")),
        ("suser", record.actor.uid if record.actor else None),
        ("msg", f"{event_name(record)} in tenant {record.tenant}"),
        ("cs1Label", "tenant"),
        ("cs1", record.tenant),
        ("cs2Label", "entityType"),
        ("cs2", str(entity.type)),
        ("cs3Label", "fingerprint"),
        ("cs3", entity.fingerprint),
        ("cs4Label", "entityName"),
        ("cs4", entity.name),
        ("cs5Label", "projectId"),
        ("cs5", record.project_id),
        ("cs6Label", "keyHint"),
        ("cs6", key_hint),
    ]
    return [(key, escape_extension(value)) for key, value in _drop_unset(fields)]


def _str_or_none(value: int | None) -> str | None:
    return None if value is None else str(value)


def _drop_unset(fields: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Leave out empty values, and the label of a custom string whose value is empty."""
    values = dict(fields)
    kept: list[tuple[str, str]] = []
    for key, value in fields:
        labelled = values.get(key.removesuffix("Label")) if key.endswith("Label") else True
        if value and labelled:
            kept.append((key, value))
    return kept


def render_cef_message(
    record: AuditRecord, header: Header, *, max_size: int = RSYSLOG_DEFAULT_MAX, version: str = ""
) -> bytes:
    """The CEF line carried in an RFC 5424 message without structured data; a cut line is marked in its extension."""
    version = version or VERSION
    head = render_head(record, header, NIL) + b" "
    line = render_cef(record, version=version).encode()
    if len(head) + len(line) <= max_size:
        return head + line
    mark = cef_truncation_mark(len(line)).encode()
    cut = _without_dangling_backslash(cut_utf8(line, max(0, max_size - len(head) - len(mark))))
    if len(cut) < len(identifying_prefix(record, version=version).encode()):
        raise MessageTooLarge(f"CEF header and externalId alone exceed max_message ({max_size} octets)")
    return head + cut + mark


def _without_dangling_backslash(cut: bytes) -> bytes:
    """A CEF value cut after an odd run of backslashes would escape our marker's leading space."""
    run = len(cut) - len(cut.rstrip(b"\\"))
    return cut[:-1] if run % 2 else cut
