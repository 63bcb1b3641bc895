"""The audit store contract: append-only, hash-chained records per tenant, plus per-sink delivery state."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from events.records import AuditRecord, EntityType

CHECKPOINT_EVERY = 1000  # records per tenant between periodic checkpoints: one HMAC and one row per thousand


class StoreUnavailable(Exception):
    """The audit store cannot be opened or reached (the message says why, in one line)."""


class DeliveryState(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one append did: which records are new, and which deliveries are still pending, per sink."""

    new_ids: list[str]
    existing_ids: list[str]
    pending: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class Delivery:
    record_id: str
    sink: str
    state: DeliveryState
    attempts: int
    next_at: str | None
    reason: str | None
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        """One sink's delivery state of a record, as `audit show` and the HTTP API print it."""
        return {
            "sink": self.sink,
            "state": str(self.state),
            "attempts": self.attempts,
            "next_at": self.next_at,
            "reason": self.reason,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Filters shared by the CLI and the HTTP API. `topic` is a glob; `since`/`until` bound the event time.

    Order: newest stored first (seq descending) by default; `oldest_first` is seq ascending; `event_time_order` is
    (event time, seq) ascending, for one key's history. `before_seq` (with `cursor_time` in event-time order) is
    the cursor: the position of the last record of the previous page. Seq is assigned in commit order, so a page
    boundary never moves when records are appended concurrently.
    """

    tenant: str | None = None
    topic: str | None = None
    fingerprint: str | None = None
    key_prefix: str | None = None
    project_id: str | None = None
    account_id: str | None = None
    entity_type: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 100
    before_seq: int | None = None
    oldest_first: bool = False
    event_id: str | None = None
    event_time_order: bool = False
    cursor_time: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOutcomes:
    """The result of one delivery attempt for one sink, to be written in one transaction."""

    delivered: list[str] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    retrying: dict[str, tuple[str, str]] = field(default_factory=dict)  # record id -> (reason, next attempt at)


Router = Callable[[AuditRecord], Sequence[str]]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: its sequence number and its JSON (`AuditRecord.to_dict()`, sorted keys, compact)."""

    seq: int
    body: str

    def record(self) -> AuditRecord:
        return AuditRecord.from_dict(json.loads(self.body))

    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a tenant's chain; `length` counts every record ever chained (pruned ones too)."""

    tenant: str
    seq: int
    hash: str
    length: int
    checkpointed: int = 0  # `length` when the tenant's last checkpoint was written


@dataclass(frozen=True, slots=True)
class ChainRow:
    """Every stored column of one record, for `verify`: the indexed columns must agree with the body."""

    seq: int
    record_id: str
    tenant: str
    event_id: str
    topic: str
    time: str
    received_at: str
    entity_type: str
    entity_uid: str | None
    fingerprint: str | None
    key_prefix: str | None
    project_id: str | None
    account_id: str | None
    body: str
    prev_hash: str
    hash: str


class CheckpointKind(StrEnum):
    PERIODIC = "periodic"  # every N records, written by append
    MANUAL = "manual"  # `keytrail audit checkpoint`
    PRUNE = "prune"  # anchors the records `prune` removed: the chain continues from this hash


class CheckpointSigner(Protocol):
    """Signs checkpoints with a key kept outside the store (see `audit.chain.HmacSigner`)."""

    key_id: str

    def sign(self, payload: bytes) -> str: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "tenant's chain had `length` records, ending at `seq` with `hash`".

    Checkpoints chain too (`prev_signature`), so a deleted checkpoint is as visible as a deleted record.
    """

    tenant: str
    seq: int
    hash: str
    length: int
    kind: CheckpointKind
    created_at: str
    prev_signature: str
    key_id: str
    signature: str
    id: int = 0

    def payload(self) -> bytes:
        return checkpoint_payload(
            self.tenant,
            seq=self.seq,
            hash_=self.hash,
            length=self.length,
            kind=self.kind,
            created_at=self.created_at,
            prev_signature=self.prev_signature,
            key_id=self.key_id,
        )

    @classmethod
    def signed(
        cls, signer: CheckpointSigner, head: ChainHead, kind: CheckpointKind, created_at: str, prev_signature: str
    ) -> Checkpoint:
        payload = checkpoint_payload(
            head.tenant,
            seq=head.seq,
            hash_=head.hash,
            length=head.length,
            kind=kind,
            created_at=created_at,
            prev_signature=prev_signature,
            key_id=signer.key_id,
        )
        return cls(
            head.tenant,
            head.seq,
            head.hash,
            head.length,
            kind,
            created_at,
            prev_signature,
            signer.key_id,
            signer.sign(payload),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "seq": self.seq,
            "hash": self.hash,
            "length": self.length,
            "kind": str(self.kind),
            "created_at": self.created_at,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def checkpoint_payload(
    tenant: str, *, seq: int, hash_: str, length: int, kind: str, created_at: str, prev_signature: str, key_id: str
) -> bytes:
    """The exact bytes a checkpoint signature covers (a JSON array: unambiguous whatever a tenant is called)."""
    fields = ["keytrail-checkpoint/1", tenant, seq, hash_, length, str(kind), created_at, prev_signature, key_id]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ChainPlace:
    """Where a record sits in its tenant's chain, and its neighbours as stored (for `audit show`)."""

    seq: int
    position: int  # 1-based, counting pruned records
    previous: tuple[str, str] | None  # (record id, hash) of the record before it, if still stored
    next: tuple[str, str] | None  # (record id, prev_hash) of the record after it
    checkpoint: Checkpoint | None  # the first checkpoint at or after this record
    anchor: Checkpoint | None  # the latest prune anchor of the tenant


@dataclass(frozen=True, slots=True)
class PruneResult:
    tenant: str
    removed: int
    undelivered: int  # deliveries of removed records that were not delivered (dropped with them)
    anchor: Checkpoint | None  # None when nothing was old enough (or on a dry run)


class ChainSnapshot(Protocol):
    """A consistent read-only view of the chains (one read transaction), for verify."""

    def tenants(self) -> list[str]:
        """Every tenant named by a chain head, a record or a checkpoint."""
        ...

    def head(self, tenant: str) -> ChainHead | None: ...

    def checkpoints(self, tenant: str) -> list[Checkpoint]:
        """The tenant's checkpoints in the order they were written."""
        ...

    def rows(self, tenant: str) -> Generator[ChainRow, None, None]:
        """The tenant's records in seq order, streamed."""
        ...


class AuditStore(Protocol):
    def append(self, records: Sequence[AuditRecord], route: Router) -> AppendResult:
        """Store records not stored yet (idempotent on tenant + event id), chaining each after its tenant's
        head, and create a pending delivery for each sink `route` names. One transaction. With a signer, a
        periodic checkpoint is written in the same transaction whenever a tenant's chain grew by N records."""
        ...

    def get(self, record_ids: Sequence[str]) -> list[AuditRecord]: ...

    def search(self, query: RecordQuery) -> list[tuple[int, AuditRecord]]:
        """Matching records with their sequence numbers, newest first unless `oldest_first`."""
        ...

    def count(self, query: RecordQuery) -> int:
        """How many records match (the cursor counts, the limit does not)."""
        ...

    def stream(self, query: RecordQuery, *, limit: int | None = None) -> Iterator[StoredRecord]:
        """All matching records in the query's order, read from one snapshot in batches (a server-side cursor on
        PostgreSQL): memory stays flat whatever the size. `query.limit` is ignored; `limit` caps the total."""
        ...

    def claim(
        self, sink: str, record_ids: Sequence[str], *, limit: int, owner: str, lease_seconds: float
    ) -> list[tuple[AuditRecord, int]]:
        """Lease to `owner`, for `lease_seconds`, what this sink still owes (pending or retrying): these records
        first, then up to `limit` others read straight off the (sink, state) index (the sweep that lets one job
        carry what later batches added). Returns them with the attempts made so far, in one write transaction.

        A delivery leased to another owner is left out until its lease expires: two jobs never send the same
        record. One leased to `owner` itself (a retried or recovered run of the same job) is taken again."""
        ...

    def record_outcomes(self, sink: str, outcomes: DeliveryOutcomes, *, owner: str | None = None) -> None:
        """Write one attempt's outcomes and release their leases. With `owner`, only deliveries still leased to it
        are written: a job whose lease was taken over (it outlived its lease) does not overwrite the new owner's."""
        ...

    def deliveries(self, record_id: str) -> list[Delivery]: ...

    def list_deliveries(
        self,
        *,
        states: Sequence[DeliveryState],
        sink: str | None = None,
        topic: str | None = None,
        since: str | None = None,
        record_id: str | None = None,
        limit: int = 100,
    ) -> list[tuple[Delivery, AuditRecord]]:
        """Deliveries in these states with their records, most recently updated first. `topic` is a glob;
        `since` bounds the delivery's last update (when it died, for dead letters)."""
        ...

    def reset_deliveries(self, sink: str, record_ids: Sequence[str]) -> list[str]:
        """Put these records' dead or retrying deliveries to `sink` back to pending with no attempts made and no
        lease; returns the record ids that were reset (the others were pending, delivered or unknown)."""
        ...

    def count_deliveries(self) -> dict[str, dict[str, int]]:
        """sink -> state -> number of deliveries."""
        ...

    def locate(self, record_id: str) -> ChainPlace | None:
        """The record's place in its tenant's chain, or None when no such record is stored."""
        ...

    def snapshot(self) -> AbstractContextManager[ChainSnapshot]:
        """A consistent read-only view of every chain, on its own connection."""
        ...

    def write_checkpoints(
        self, signer: CheckpointSigner, kind: CheckpointKind = CheckpointKind.MANUAL, *, tenant: str | None = None
    ) -> list[Checkpoint]:
        """Sign and store a checkpoint of each tenant's head that moved since its last checkpoint."""
        ...

    def prune(
        self, before: str, signer: CheckpointSigner, *, tenant: str | None = None, dry_run: bool = False
    ) -> list[PruneResult]:
        """Remove each tenant's oldest records received before `before` (a prefix of its chain, so the rest
        stays verifiable from a signed prune anchor), with their deliveries. The only path that deletes records."""
        ...

    def close(self) -> None: ...


# ---- Filters as users type them (CLI flags and API query parameters) → RecordQuery ----------------------------

RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FINGERPRINT = re.compile(r"^fp_[0-9a-f]{32}$")
KEY_PREFIX = re.compile(r"^(?:live|test)_(?:access_)?$")
ENTITY_TYPES = {t.value.lower().replace(" ", "-"): t.value for t in EntityType}
FILTERS = ("tenant", "topic", "key", "project", "account", "entity_type", "event_id", "since", "until")


class QueryError(ValueError):
    """A filter value that cannot be used; the message (one line) names the filter and says what would work."""


# Every value a user types is bounded here, so that none can overflow a datetime, a timedelta or a store's
# integers, or carry a byte the store refuses (NUL in PostgreSQL text, a lone surrogate in UTF-8) deeper down.
MAX_TEXT = 1024  # characters of one free-text value: tenant, topic glob, ids, a key
MAX_TIME_TEXT = 64
MAX_CURSOR = 512  # an issued cursor is about 100 characters
MAX_SEQ = 2**63 - 1  # a store position: SQLite INTEGER and PostgreSQL BIGINT
MAX_AGE = timedelta(days=36525)  # how far back a relative time reaches: 100 years
UNUSABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control characters and lone surrogates
CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+={0,2}")
TIME_HINT = "use ISO 8601 like 2026-11-01T10:00:00Z, or relative like 24h / 7d"
NOT_ISSUED = "cursor is not one this server issued"


def quoted(value: str, width: int = 40) -> str:
    """A user's value as it may appear in an error: quoted, escaped (one printable line whatever it holds) and cut."""
    shown = repr(value[:width])
    return shown if len(value) <= width else shown[:-1] + "…" + shown[-1]


def parse_text(name: str, value: str, *, max_length: int = MAX_TEXT) -> str:
    """A free-text value (tenant, topic glob, an id, a key) without surrounding blanks; QueryError if it is empty,
    longer than `max_length`, or holds a control character or a lone surrogate."""
    text = value.strip()
    if not text:
        raise QueryError(f"{name} must not be empty")
    if len(text) > max_length:
        raise QueryError(f"{name} is longer than {max_length} characters")
    if UNUSABLE.search(text):
        raise QueryError(f"{name} must not contain control characters or lone surrogates")
    return text


def parse_count(name: str, value: str, *, maximum: int, minimum: int = 1) -> int:
    """A whole number as typed, in ASCII digits only (`str.isdigit` also takes `²`; `int` takes other scripts'
    digits, `_` and signs), within bounds."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise QueryError(f"{name} must be a whole number from {minimum} to {maximum}")
    significant = text.lstrip("0") or "0"
    if len(significant) > len(str(maximum)) or not minimum <= int(significant) <= maximum:
        raise QueryError(f"{name} must be between {minimum} and {maximum}")
    return int(significant)


def parse_time(value: str, *, now: datetime | None = None) -> str:
    """ISO 8601 (`2026-11-01`, `2026-11-01T10:00:00Z`) or relative to now (`24h`, `7d`, at most 100 years back)
    → ISO UTC with ms and `Z`, the format records store, so times compare as strings. A time outside years
    1..9999 once in UTC is a QueryError, as is anything else that is not a time."""
    moment = now or datetime.now(UTC)
    text = value.strip()
    if len(text) > MAX_TIME_TEXT or UNUSABLE.search(text):
        raise QueryError(f"not a time: {quoted(value)} ({TIME_HINT})")
    match = RELATIVE.match(text) if text.isascii() else None  # `\d` alone would take other scripts' digits
    if match:
        age = timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        if age > MAX_AGE:
            raise QueryError(f"{text} reaches back more than {MAX_AGE.days} days; give a date instead")
        try:
            parsed = moment - age
        except OverflowError:
            raise QueryError(f"{text} reaches back before year 1") from None
    else:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise QueryError(f"not a time: {quoted(value)} ({TIME_HINT})") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        raise QueryError(f"time out of range: {quoted(value)} (years 1 to 9999, in UTC)") from None
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_entity_type(value: str) -> str:
    """`api-key`, `API Key`, `access-key`, `project`, `unknown` (any case) → the stored entity type."""
    normalized = value.strip().lower().replace(" ", "-").replace("_", "-")
    if normalized not in ENTITY_TYPES:
        raise QueryError(f"entity type {quoted(value)} is not one of {', '.join(ENTITY_TYPES)}")
    return ENTITY_TYPES[normalized]


def key_filter(value: str, fingerprint_of: Callable[[str], str]) -> dict[str, str]:
    """`--key`: a fingerprint (`fp_…`) is used as is, a bare prefix (`live_`, `test_access_`) matches every key
    with it, and anything else is a raw key, fingerprinted here with the local pepper and then forgotten."""
    text = parse_text("key", value)
    if FINGERPRINT.match(text):
        return {"fingerprint": text}
    if KEY_PREFIX.match(text):
        return {"key_prefix": text}
    return {"fingerprint": fingerprint_of(text)}


def encode_cursor(seq: int, order: str, time: str | None = None) -> str:
    """An opaque page token: the last record's position and the order it belongs to."""
    state: dict[str, Any] = {"s": seq, "o": order}
    if time is not None:
        state["t"] = time
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, order: str) -> tuple[int, str | None]:
    """The position and time an `encode_cursor` token names. Cursors are not signed: a client may forge one, so
    every field is checked to be what this server could have issued (a position a store integer holds, a time
    that is plain text), and anything else is a QueryError."""
    text = token.strip()
    if not text:
        raise QueryError("cursor must not be empty")
    if len(text) > MAX_CURSOR or not CURSOR_TEXT.fullmatch(text):
        raise QueryError(NOT_ISSUED)
    try:
        state = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        seq, time, cursor_order = state["s"], state.get("t"), state["o"]
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise QueryError(NOT_ISSUED) from None
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise QueryError(NOT_ISSUED)
    if time is not None and (not isinstance(time, str) or len(time) > MAX_TIME_TEXT or UNUSABLE.search(time)):
        raise QueryError(NOT_ISSUED)
    if cursor_order != order or (order == "event_time") != (time is not None):
        raise QueryError(f"cursor belongs to a query in another order (this one is {order})")
    return seq, time


ORDERS = ("newest", "oldest", "event_time")


def query_order(query: RecordQuery) -> str:
    return "event_time" if query.event_time_order else "oldest" if query.oldest_first else "newest"


def next_cursor(query: RecordQuery, last: StoredRecord | tuple[int, AuditRecord]) -> str:
    """The cursor for the page after one that ended with `last`."""
    if isinstance(last, StoredRecord):
        seq = last.seq
        time = last.data()["time"] if query.event_time_order else None
    else:
        seq, record = last
        time = record.time if query.event_time_order else None
    return encode_cursor(seq, query_order(query), time)


def build_query(
    filters: Mapping[str, str | None],
    *,
    fingerprint_of: Callable[[str], str],
    limit: int = 100,
    max_limit: int = 1000,
    order: str = "newest",
    cursor: str | None = None,
    now: datetime | None = None,
) -> RecordQuery:
    """One RecordQuery from user-typed filters (names as in FILTERS; None means unset, blank is an error).

    Raises QueryError naming the first bad value, so the CLI prints one line and the API answers 400."""
    unknown = sorted(name for name, value in filters.items() if value is not None and name not in FILTERS)
    if unknown:
        raise QueryError(f"unknown filter {quoted(unknown[0])} (filters: {', '.join(FILTERS)})")
    # A blank value is an error, not "no filter": `--key "$KEY"` with KEY unset must not turn "this key's
    # history" into "everything".
    values = {name: parse_text(name, value) for name, value in filters.items() if value is not None}
    if order not in ORDERS:
        raise QueryError(f"order must be one of {', '.join(ORDERS)}")
    if not 1 <= limit <= max_limit:
        raise QueryError(f"limit must be between 1 and {max_limit}")
    fields: dict[str, Any] = {
        "limit": limit,
        "oldest_first": order == "oldest",
        "event_time_order": order == "event_time",
        **{target: values[name] for name, target in PLAIN_FILTERS.items() if name in values},
        **_times(values, now),
    }
    if "key" in values:
        fields.update(key_filter(values["key"], fingerprint_of))
    if "entity_type" in values:
        fields["entity_type"] = parse_entity_type(values["entity_type"])
    if cursor is not None:
        fields["before_seq"], fields["cursor_time"] = decode_cursor(cursor, order)
    return RecordQuery(**fields)


PLAIN_FILTERS = {
    "tenant": "tenant",
    "topic": "topic",
    "project": "project_id",
    "account": "account_id",
    "event_id": "event_id",
}


def _times(values: Mapping[str, str], now: datetime | None) -> dict[str, str]:
    times: dict[str, str] = {}
    for name in ("since", "until"):
        if name in values:
            try:
                times[name] = parse_time(values[name], now=now)
            except QueryError as exc:
                raise QueryError(f"{name}: {exc}") from None
    if "since" in times and "until" in times and times["since"] >= times["until"]:
        raise QueryError("since must be before until")
    return times


def search_page(store: AuditStore, query: RecordQuery) -> tuple[list[tuple[int, AuditRecord]], str | None]:
    """One page and the cursor of the next (None on the last page): reads one record more than it returns."""
    found = store.search(replace(query, limit=query.limit + 1))
    page = found[: query.limit]
    return page, next_cursor(query, page[-1]) if len(found) > query.limit else None
