"""Tamper evidence for the audit trail: signed checkpoints, `verify` and `prune` (the key: config/datadir.py).

Each tenant's records form a hash chain (`AuditRecord.chained`). The chain alone shows an edited, deleted or
inserted row, but not a rewrite of the whole tail (recompute every hash from some record on). Checkpoints close
that gap: an HMAC over (tenant, seq, hash, chain length), keyed by a secret kept outside the store, written to the
store and to the log stream. Shared by `keytrail audit ...` and `GET /api/audit/verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection, Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from audit.stores import open_store
from audit.stores.base import (
    AuditStore,
    ChainHead,
    ChainPlace,
    ChainRow,
    ChainSnapshot,
    Checkpoint,
    CheckpointKind,
    PruneResult,
)
from config.datadir import checkpoint_key
from config.settings import Settings
from events.records import GENESIS_HASH, AuditRecord, chain_hash


class HmacSigner:
    """HMAC-SHA256 checkpoint signatures. `key_id` names the key (not derivable back to it) so `verify` can tell
    "signed with another key" from "forged"."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.key_id = "k_" + hashlib.sha256(b"keytrail checkpoint key id\n" + key).hexdigest()[:12]

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = True) -> HmacSigner | None:
        key = checkpoint_key(settings, create=create)
        return cls(key) if key else None

    def sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def verify(self, payload: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(payload), signature)

    def __repr__(self) -> str:
        return f"HmacSigner(key_id={self.key_id!r})"


def open_signed_store(settings: Settings) -> AuditStore:
    """The audit store with periodic checkpoints on (what workers should append through)."""
    return open_store(settings.audit.url, signer=HmacSigner.from_settings(settings))


class BreakKind(StrEnum):
    EDITED = "edited"  # a record's content, hash or indexed columns no longer agree
    DELETED = "deleted"  # a record the chain or a checkpoint names is missing
    INSERTED = "inserted"  # a record that is not part of the chain
    REWRITTEN = "rewritten"  # the chain is consistent but differs from what a signed checkpoint saw
    CHECKPOINT = "checkpoint"  # a checkpoint is forged, edited, missing, or signed with a key this machine lacks


@dataclass(frozen=True, slots=True)
class Break:
    kind: BreakKind
    detail: str
    seq: int | None = None
    record_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "seq": self.seq, "record_id": self.record_id, "detail": self.detail}

    def describe(self) -> str:
        where = f" at seq {self.seq}" if self.seq is not None else ""
        record = f" ({self.record_id})" if self.record_id else ""
        return f"{self.kind}{where}{record}: {self.detail}"


@dataclass(frozen=True, slots=True)
class TenantVerification:
    tenant: str
    records: int  # records checked (up to the first break)
    checkpoints: int
    first_break: Break | None

    @property
    def ok(self) -> bool:
        return self.first_break is None

    @property
    def empty(self) -> bool:
        """Nothing stored for the tenant at all (a configured tenant that has sent nothing yet): not a break."""
        return self.ok and self.records == 0 and self.checkpoints == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "break": self.first_break.to_dict() if self.first_break else None,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    tenants: list[TenantVerification]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tenants)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tenants": [t.to_dict() for t in self.tenants]}


class UnknownTenant(LookupError):
    pass


class ChainBroken(Exception):
    """Refused because verification failed (prune never removes the evidence of a break)."""

    def __init__(self, verification: Verification) -> None:
        broken = next(t for t in verification.tenants if not t.ok)
        assert broken.first_break is not None
        super().__init__(f"tenant {broken.tenant}: {broken.first_break.describe()}")
        self.verification = verification


def verify(
    store: AuditStore, signer: HmacSigner | None, *, tenant: str | None = None, configured: Collection[str] = ()
) -> Verification:
    """Recompute every chain (or one tenant's) from one snapshot and check every checkpoint against it.

    `configured` are the tenants the settings name: each is verified even when the store lists nothing of it, so
    a tenant whose rows were all deleted shows up (as "no records", or as a break where checkpoints or a chain
    head outlived its records) instead of silently dropping out of the report."""
    with store.snapshot() as snapshot:
        stored = snapshot.tenants()
        if tenant is not None:
            if tenant not in stored and tenant not in configured:
                raise UnknownTenant(tenant)
            tenants = [tenant]
        else:
            tenants = sorted({*stored, *configured})
        return Verification([_verify_tenant(snapshot, name, signer) for name in tenants])


def _verify_tenant(snapshot: ChainSnapshot, tenant: str, signer: HmacSigner | None) -> TenantVerification:
    checkpoints = snapshot.checkpoints(tenant)
    walk = _ChainWalk(snapshot, tenant, checkpoints)
    found = _records_gone(snapshot, walk, checkpoints) or _checkpoint_problem(checkpoints, signer)
    if found is None:
        breaks = walk.breaks()
        try:
            found = next(breaks, None)
        finally:
            breaks.close()  # the first break is enough: stop the walk
    return TenantVerification(tenant, walk.checked, len(checkpoints), found)


class _ChainWalk:
    """One tenant's chain walked in seq order from its prune anchor (or genesis); `breaks()` yields what is wrong,
    the caller keeps only the first."""

    def __init__(self, snapshot: ChainSnapshot, tenant: str, checkpoints: list[Checkpoint]) -> None:
        self.snapshot = snapshot
        self.tenant = tenant
        self.head = snapshot.head(tenant)
        self.anchor = next((c for c in reversed(checkpoints) if c.kind is CheckpointKind.PRUNE), None)
        self.horizon = self.anchor.seq if self.anchor else 0
        self.due = sorted((c for c in checkpoints if c.seq > self.horizon), key=lambda c: (c.seq, c.id))
        self.checked = 0

    def breaks(self) -> Generator[Break, None, None]:
        rows = _Peekable(self.snapshot.rows(self.tenant))
        try:
            yield from self._walk(rows)
        finally:
            rows.close()  # a server-side cursor closes now, inside the snapshot, not whenever GC gets to it

    def _walk(self, rows: _Peekable) -> Iterator[Break]:
        expected = self.anchor.hash if self.anchor else GENESIS_HASH
        position = self.anchor.length if self.anchor else 0
        last: ChainRow | None = None
        for row in rows:
            if self.due and self.due[0].seq < row.seq:
                yield _missing(self.due[0])
            if row.seq <= self.horizon:
                yield _at(row, BreakKind.INSERTED, f"stored at or before the pruned horizon (seq {self.horizon})")
            if self.head is not None and row.seq > self.head.seq:
                yield _at(row, BreakKind.INSERTED, f"stored after the chain head (seq {self.head.seq})")
            found = _row_problem(row, expected)
            if found:
                following = rows.peek()
                inserted = "not part of the chain: the record after it links to the one before it"
                if following is not None and following.prev_hash == expected and row.hash != expected:
                    yield _at(row, BreakKind.INSERTED, inserted)
                if found[0] is BreakKind.DELETED and last is not None and row.prev_hash == last.prev_hash:
                    yield _at(last, BreakKind.INSERTED, inserted)  # a well-formed forgery: it linked itself in
                yield _at(row, *found)
            position += 1
            self.checked += 1
            yield from self._checkpoints_at(row, position)
            expected, last = row.hash, row
        if self.due:
            yield _missing(self.due[0])
        found_at_end = _head_problem(self.head, last, position, self.anchor)
        if found_at_end:
            yield found_at_end

    def _checkpoints_at(self, row: ChainRow, position: int) -> Iterator[Break]:
        while self.due and self.due[0].seq == row.seq:
            checkpoint = self.due.pop(0)
            if checkpoint.hash != row.hash:
                detail = (
                    f"differs from signed checkpoint #{checkpoint.id} of {checkpoint.created_at}: "
                    "the chain was rewritten from here or before"
                )
                yield _at(row, BreakKind.REWRITTEN, detail)
            if checkpoint.length != position:
                kind = BreakKind.DELETED if position < checkpoint.length else BreakKind.INSERTED
                detail = f"chain holds {position} records here; checkpoint #{checkpoint.id} signed {checkpoint.length}"
                yield _at(row, kind, detail)


def _records_gone(snapshot: ChainSnapshot, walk: _ChainWalk, checkpoints: list[Checkpoint]) -> Break | None:
    """A tenant with no records left although its checkpoints or chain head say it had some (beyond a prune that
    removed them all, which its anchor and head both record)."""
    rows = snapshot.rows(walk.tenant)
    try:
        if next(rows, None) is not None:
            return None
    finally:
        rows.close()
    kept = walk.anchor.length if walk.anchor else 0
    if checkpoints and (walk.head is None or walk.head.length > kept):
        return Break(BreakKind.DELETED, f"{len(checkpoints)} checkpoints but no records")
    if walk.head is not None and walk.head.length > kept:
        return Break(BreakKind.DELETED, f"its chain head names {walk.head.length} records but no records are stored")
    return None


def _checkpoint_problem(checkpoints: list[Checkpoint], signer: HmacSigner | None) -> Break | None:
    previous = ""
    for checkpoint in checkpoints:
        if signer is None:
            return Break(
                BreakKind.CHECKPOINT, "checkpoints exist but this machine has no checkpoint key", checkpoint.seq
            )
        if checkpoint.key_id != signer.key_id:
            detail = (
                f"checkpoint #{checkpoint.id} is signed with key {checkpoint.key_id}; this machine has {signer.key_id}"
            )
            return Break(BreakKind.CHECKPOINT, detail, checkpoint.seq)
        if not signer.verify(checkpoint.payload(), checkpoint.signature):
            return Break(BreakKind.CHECKPOINT, f"checkpoint #{checkpoint.id} is forged or edited", checkpoint.seq)
        if checkpoint.prev_signature != previous:
            return Break(BreakKind.CHECKPOINT, f"a checkpoint before #{checkpoint.id} is missing", checkpoint.seq)
        previous = checkpoint.signature
    return None


def _row_problem(row: ChainRow, expected: str) -> tuple[BreakKind, str] | None:
    try:
        data = json.loads(row.body)
        entity = data["entity"]
        columns = {
            "record_id": data["record_id"],
            "tenant": data["tenant"],
            "event_id": data["event_id"],
            "topic": data["topic"],
            "time": data["time"],
            "received_at": data["received_at"],
            "entity_type": entity["type"],
            "entity_uid": entity.get("uid"),
            "fingerprint": entity.get("fingerprint"),
            "key_prefix": entity.get("prefix"),
            "project_id": data.get("project_id"),
            "account_id": data.get("account_id"),
            "prev_hash": data["prev_hash"],
            "hash": data["hash"],
        }
        del data["hash"]
        # The body is `to_dict()` as stored, so this is exactly `canonical_json()`, and stricter: even a derived
        # field edited in the body changes the hash.
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, KeyError, TypeError, AttributeError):
        return BreakKind.EDITED, "its body is not a readable record"
    for name, value in columns.items():
        if getattr(row, name) != value:
            return BreakKind.EDITED, f"column {name} differs from the record's body"
    if chain_hash(row.prev_hash, canonical) != row.hash:
        return BreakKind.EDITED, "its content does not match its hash"
    if row.prev_hash != expected:
        return BreakKind.DELETED, (
            "its prev_hash is not the hash of the record stored before it: a record before it is missing "
            "(or the one before was edited and re-hashed)"
        )
    return None


def _head_problem(
    head: ChainHead | None, last: ChainRow | None, length: int, anchor: Checkpoint | None
) -> Break | None:
    if head is None:
        if last is not None:
            return Break(BreakKind.DELETED, "the tenant's chain head is missing", last.seq, last.record_id)
        return None
    end_seq = last.seq if last else (anchor.seq if anchor else 0)
    end_hash = last.hash if last else (anchor.hash if anchor else GENESIS_HASH)
    if (head.seq, head.hash, head.length) != (end_seq, end_hash, length):
        detail = (
            f"the chain head names seq {head.seq} ({head.length} records) but the chain ends at seq {end_seq} "
            f"({length} records): records at its end were deleted"
        )
        return Break(BreakKind.DELETED, detail, head.seq)
    return None


def _missing(checkpoint: Checkpoint) -> Break:
    return Break(BreakKind.DELETED, f"the record signed by checkpoint #{checkpoint.id} is missing", checkpoint.seq)


def _at(row: ChainRow, kind: BreakKind, detail: str) -> Break:
    return Break(kind, detail, row.seq, row.record_id)


class _Peekable:
    def __init__(self, rows: Generator[ChainRow, None, None]) -> None:
        self._rows = rows
        self._next: list[ChainRow] = []

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> ChainRow:
        return self._next.pop() if self._next else next(self._rows)

    def peek(self) -> ChainRow | None:
        if not self._next:
            try:
                self._next.append(next(self._rows))
            except StopIteration:
                return None
        return self._next[0]

    def close(self) -> None:
        self._rows.close()


def write_checkpoints(store: AuditStore, signer: HmacSigner, *, tenant: str | None = None) -> list[Checkpoint]:
    """Checkpoint every tenant's head that moved since its last checkpoint (`keytrail audit checkpoint`)."""
    return store.write_checkpoints(signer, CheckpointKind.MANUAL, tenant=tenant)


def prune(
    store: AuditStore, signer: HmacSigner, before: str, *, tenant: str | None = None, dry_run: bool = False
) -> list[PruneResult]:
    """Remove records received before `before`, leaving a signed anchor where each chain now starts.

    Refuses while `verify` fails: pruning must never remove the evidence of a break."""
    if not dry_run:
        verification = verify(store, signer, tenant=tenant)
        if not verification.ok:
            raise ChainBroken(verification)
    return store.prune(before, signer, tenant=tenant, dry_run=dry_run)


def place_report(record: AuditRecord, place: ChainPlace) -> dict[str, Any]:
    """A record's place in its chain, with the local checks `audit show` and the API report."""
    if place.previous:
        expected_prev = place.previous[1]
    elif place.anchor and place.anchor.seq < place.seq:
        expected_prev = place.anchor.hash
    else:
        expected_prev = GENESIS_HASH
    return {
        "tenant": record.tenant,
        "seq": place.seq,
        "position": place.position,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "previous_record_id": place.previous[0] if place.previous else None,
        "next_record_id": place.next[0] if place.next else None,
        "hash_ok": chain_hash(record.prev_hash, record.canonical_json()) == record.hash,
        "linked_to_previous": record.prev_hash == expected_prev,
        "linked_from_next": place.next is None or place.next[1] == record.hash,
        "checkpoint": place.checkpoint.to_dict() if place.checkpoint else None,
    }
