"""The audit store contract on both backends (SQLite and PostgreSQL): append, queries, cursors, deliveries,
append-only enforcement, verify against tampering, checkpoints, prune, migrations, concurrent appenders."""

from __future__ import annotations

import multiprocessing
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from stores_fixtures import (  # noqa: F401 - fixtures
    SIGNER,
    append_worker,
    make_record,
    pg_url_fixture,
    raw_execute,
    raw_fetch,
    route_all,
    store_fixture,
    store_url_fixture,
    tamper,
)
from structlog.testing import capture_logs

from audit.chain import BreakKind, ChainBroken, HmacSigner, prune, verify, write_checkpoints
from audit.queries import build_query, search_page
from audit.stores import (
    AuditStore,
    CheckpointKind,
    DeliveryOutcomes,
    DeliveryState,
    RecordQuery,
    StoreUnavailable,
    open_store,
)
from audit.stores.sqlite import MIGRATIONS, SqliteStore, connect
from audit.stores.tables import RECORD_COLUMNS, record_row
from events.records import GENESIS_HASH, EntityType

FP_A = "fp_" + "a" * 32
FP_B = "fp_" + "b" * 32


def ids(found: list[tuple[int, object]]) -> list[str]:
    return [record.record_id for _, record in found]  # type: ignore[attr-defined]


def seq_of(store: AuditStore, record_id: str) -> int:
    place = store.locate(record_id)
    assert place is not None
    return place.seq


def first_break(store: AuditStore, signer: HmacSigner | None = SIGNER, tenant: str | None = None) -> object:
    report = verify(store, signer, tenant=tenant)
    broken = [t.first_break for t in report.tenants if t.first_break]
    return broken[0] if broken else None


# ---- append ---------------------------------------------------------------------------------------------------


def test_append_stores_each_event_once_and_chains_each_tenant(store: AuditStore) -> None:
    first = store.append([make_record(0), make_record(1), make_record(0, tenant="beta")], route_all)
    again = store.append([make_record(1), make_record(2), make_record(2)], route_all)

    assert first.new_ids == ["rec_acme_000000", "rec_acme_000001", "rec_beta_000000"]
    assert again.new_ids == ["rec_acme_000002"]
    assert again.existing_ids == ["rec_acme_000001", "rec_acme_000002"]
    assert sorted(again.pending) == ["archive", "splunk"]
    assert sorted(again.pending["archive"]) == ["rec_acme_000001", "rec_acme_000002"]
    acme = [r for _, r in store.search(RecordQuery(tenant="acme", oldest_first=True))]
    assert acme[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in acme[1:]] == [r.hash for r in acme[:-1]]
    (beta,) = store.get(["rec_beta_000000"])
    assert beta.prev_hash == GENESIS_HASH
    assert verify(store, SIGNER).ok


def test_an_empty_append_does_nothing(store: AuditStore) -> None:
    result = store.append([], route_all)
    assert (result.new_ids, result.existing_ids, result.pending) == ([], [], {})


# ---- queries ----------------------------------------------------------------------------------------------------


@pytest.fixture
def varied(store: AuditStore) -> AuditStore:
    store.append(
        [
            make_record(0, key=FP_A, time="2026-11-01T08:00:00.000Z"),
            make_record(1, key=FP_A, topic="api-key.updated", time="2026-11-03T08:00:00.000Z"),
            make_record(2, key=FP_A, topic="api-key.deleted", time="2026-11-02T08:00:00.000Z"),
            make_record(3, key=FP_B, tenant="beta", project="proj-2", time="2026-11-02T09:00:00.000Z"),
            make_record(4, topic="project.updated", entity_type=EntityType.PROJECT, account="acct-2"),
            make_record(5, topic="access-key.created", entity_type=EntityType.ACCESS_KEY, key=FP_B),
            make_record(6, topic="api_key.odd%name", time="2026-11-04T00:00:00.000Z"),
        ],
        route_all,
    )
    return store


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (RecordQuery(), [6, 5, 4, 3, 2, 1, 0]),
        (RecordQuery(tenant="beta"), [3]),
        (RecordQuery(topic="api-key.*"), [3, 2, 1, 0]),
        (RecordQuery(topic="*.created"), [5, 3, 0]),
        (RecordQuery(topic="api_key.odd%name"), [6]),  # LIKE's own wildcards are matched literally
        (RecordQuery(topic="api?key.*"), [6, 3, 2, 1, 0]),
        (RecordQuery(fingerprint=FP_A), [2, 1, 0]),
        (RecordQuery(fingerprint=FP_B, tenant="acme"), [5]),
        (RecordQuery(key_prefix="live_"), [5, 3, 2, 1, 0]),
        (RecordQuery(project_id="proj-2"), [3]),
        (RecordQuery(account_id="acct-2"), [4]),
        (RecordQuery(entity_type="Access Key"), [5]),
        (RecordQuery(event_id="evt-4"), [4]),
        (RecordQuery(since="2026-11-02T08:00:00.000Z"), [6, 3, 2, 1]),
        (RecordQuery(since="2026-11-02T00:00:00.000Z", until="2026-11-03T00:00:00.000Z"), [3, 2]),
        (RecordQuery(limit=2), [6, 5]),
        (RecordQuery(oldest_first=True, limit=3), [0, 1, 2]),
        (RecordQuery(fingerprint=FP_A, event_time_order=True), [0, 2, 1]),
        (RecordQuery(tenant="nobody"), []),
    ],
)
def test_filters_and_orders(varied: AuditStore, query: RecordQuery, expected: list[int]) -> None:
    found = varied.search(query)
    assert [int(r.event_id.removeprefix("evt-")) for _, r in found] == expected
    assert varied.count(replace(query, limit=100)) == len(varied.search(replace(query, limit=100)))


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"key": "fp_" + "0" * 32}, {"fingerprint": "fp_" + "0" * 32}),
        ({"key": "live_"}, {"key_prefix": "live_"}),
        ({"key": "test_access_"}, {"key_prefix": "test_access_"}),
        ({"key": "live_secretkeymaterial123"}, {"fingerprint": "FP(live_secretkeymaterial123)"}),
        ({"entity_type": "api-key"}, {"entity_type": "API Key"}),
        ({"entity_type": "Access Key"}, {"entity_type": "Access Key"}),
        ({"since": "2026-11-01"}, {"since": "2026-11-01T00:00:00.000Z"}),
        ({"until": "2026-11-01T12:00:00+02:00"}, {"until": "2026-11-01T10:00:00.000Z"}),
        ({"tenant": None, "topic": None}, {}),
    ],
)
def test_filters_as_typed_become_a_query(filters: dict[str, str | None], expected: dict[str, str]) -> None:
    query = build_query(filters, fingerprint_of=lambda raw: f"FP({raw})")
    assert {k: v for k, v in vars_of(query).items() if v and k not in ("limit",)} == expected


def vars_of(query: RecordQuery) -> dict[str, object]:
    return {name: getattr(query, name) for name in RecordQuery.__dataclass_fields__}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"filters": {"colour": "red"}}, "unknown filter 'colour'"),
        ({"filters": {"key": "  "}}, "key must not be empty"),
        ({"filters": {"entity_type": "robot"}}, "entity type"),
        ({"filters": {"since": "last week"}}, "since: not a time"),
        ({"filters": {"since": "2d", "until": "3d"}}, "since must be before until"),
        ({"filters": {}, "limit": 0}, "limit must be between 1 and 1000"),
        ({"filters": {}, "order": "random"}, "order must be one of"),
        ({"filters": {}, "cursor": "%%%"}, "cursor is not one this server issued"),
        ({"filters": {}, "cursor": "eyJzIjoiMSIsIm8iOiJuZXdlc3QifQ"}, "cursor is not one this server issued"),
        ({"filters": {}, "cursor": "eyJzIjoxLCJvIjoibmV3ZXN0In0", "order": "oldest"}, "another order"),
    ],
)
def test_bad_filters_say_what_is_wrong(kwargs: dict[str, object], reason: str) -> None:
    from audit.queries import QueryError

    with pytest.raises(QueryError, match=reason):
        build_query(fingerprint_of=str, **kwargs)  # type: ignore[arg-type]


def test_cursor_pages_do_not_shift_when_records_are_appended(store: AuditStore) -> None:
    store.append([make_record(n) for n in range(25)], route_all)
    query = RecordQuery(tenant="acme", limit=10)
    page, cursor = search_page(store, query)
    seen = ids(page)  # type: ignore[arg-type]
    store.append([make_record(n) for n in range(100, 105)], route_all)  # arrives between two page reads
    while cursor:
        page, cursor = search_page(store, build_query({"tenant": "acme"}, fingerprint_of=str, limit=10, cursor=cursor))
        seen += ids(page)  # type: ignore[arg-type]
    assert seen == [f"rec_acme_{n:06d}" for n in reversed(range(25))]


def test_event_time_cursor_handles_equal_times(store: AuditStore) -> None:
    same = "2026-11-05T00:00:00.000Z"
    store.append([make_record(n, key=FP_A, time=same if n % 2 else None) for n in range(9)], route_all)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = build_query({"key": FP_A}, fingerprint_of=str, limit=2, order="event_time", cursor=cursor)
        page, cursor = search_page(store, query)
        seen += ids(page)  # type: ignore[arg-type]
        if cursor is None:
            break
    expected = [n for n in range(9) if n % 2 == 0] + [n for n in range(9) if n % 2]
    assert seen == [f"rec_acme_{n:06d}" for n in expected]


def test_oldest_first_cursor_sees_records_appended_later(store: AuditStore) -> None:
    store.append([make_record(n) for n in range(3)], route_all)
    page, _ = search_page(store, RecordQuery(oldest_first=True, limit=10))
    last = page[-1][0]
    store.append([make_record(n) for n in range(3, 5)], route_all)
    later = store.search(RecordQuery(oldest_first=True, before_seq=last))
    assert ids(later) == ["rec_acme_000003", "rec_acme_000004"]  # type: ignore[arg-type]


def test_stream_reads_any_number_of_records_in_order(store: AuditStore) -> None:
    store.append([make_record(n, tenant="acme" if n % 3 else "beta") for n in range(4500)], route_all)
    streamed = list(store.stream(RecordQuery(tenant="acme", oldest_first=True, limit=1)))
    assert len(streamed) == 3000
    assert [s.seq for s in streamed] == sorted(s.seq for s in streamed)
    assert streamed[0].record().record_id == "rec_acme_000001"
    assert streamed[0].data()["hash"] == streamed[1].data()["prev_hash"]
    assert [s.seq for s in store.stream(RecordQuery(), limit=5)] == list(range(4500, 4495, -1))
    assert store.count(RecordQuery(tenant="beta")) == 1500


def test_an_unfinished_stream_can_be_abandoned(store: AuditStore) -> None:
    store.append([make_record(n) for n in range(10)], route_all)
    rows = store.stream(RecordQuery())
    assert next(rows).seq == 10
    rows.close()  # type: ignore[attr-defined]
    assert store.count(RecordQuery()) == 10


def test_locate_names_neighbours_position_and_covering_checkpoint(store: AuditStore) -> None:
    store.append([make_record(n) for n in range(3)] + [make_record(0, tenant="beta")], route_all)
    write_checkpoints(store, SIGNER)
    store.append([make_record(3)], route_all)
    middle, last = store.locate("rec_acme_000001"), store.locate("rec_acme_000003")
    assert middle is not None
    assert last is not None
    assert middle.position == 2
    assert middle.previous is not None
    assert middle.previous[0] == "rec_acme_000000"
    assert middle.next is not None
    assert middle.next[0] == "rec_acme_000002"
    assert middle.checkpoint is not None
    assert middle.checkpoint.seq == 3
    assert (last.position, last.next, last.checkpoint) == (4, None, None)
    assert store.locate("rec_missing") is None


# ---- deliveries -------------------------------------------------------------------------------------------------


def test_list_reset_and_count_deliveries(store: AuditStore) -> None:
    store.append([make_record(n, topic="api-key.created" if n < 3 else "project.updated") for n in range(5)], route_all)
    store.record_outcomes("splunk", DeliveryOutcomes(dead={"rec_acme_000000": "400 bad event"}))
    store.record_outcomes("splunk", DeliveryOutcomes(dead={"rec_acme_000003": "400 bad event"}))
    store.record_outcomes("splunk", DeliveryOutcomes(retrying={"rec_acme_000001": ("503", "2026-11-01T00:00:00Z")}))
    store.record_outcomes("archive", DeliveryOutcomes(delivered=["rec_acme_000000", "rec_acme_000001"]))

    dead = store.list_deliveries(states=[DeliveryState.DEAD])
    assert [(d.record_id, d.sink, d.reason) for d, _ in dead] == [
        ("rec_acme_000003", "splunk", "400 bad event"),
        ("rec_acme_000000", "splunk", "400 bad event"),
    ]
    assert dead[0][1].record_id == "rec_acme_000003"
    failing = store.list_deliveries(states=[DeliveryState.DEAD, DeliveryState.RETRYING], topic="api-key.*")
    assert sorted(d.record_id for d, _ in failing) == ["rec_acme_000000", "rec_acme_000001"]
    assert store.list_deliveries(states=[DeliveryState.DEAD], sink="archive") == []
    assert len(store.list_deliveries(states=[DeliveryState.DEAD], record_id="rec_acme_000000")) == 1
    assert store.list_deliveries(states=[DeliveryState.DEAD], since="2999-01-01T00:00:00Z") == []
    assert len(store.list_deliveries(states=[DeliveryState.PENDING], limit=3)) == 3
    assert store.count_deliveries() == {
        "archive": {"delivered": 2, "pending": 3},
        "splunk": {"dead": 2, "retrying": 1, "pending": 2},
    }

    reset = store.reset_deliveries("splunk", ["rec_acme_000001", "rec_acme_000000", "rec_acme_000002", "rec_nope"])
    assert reset == ["rec_acme_000001", "rec_acme_000000"]
    owed = store.claim(
        "splunk", ["rec_acme_000000", "rec_acme_000001", "rec_acme_000003"], limit=0, owner="job:a", lease_seconds=60
    )
    assert sorted((r.record_id, attempts) for r, attempts in owed) == [("rec_acme_000000", 0), ("rec_acme_000001", 0)]
    assert store.reset_deliveries("archive", ["rec_acme_000000"]) == []  # delivered stays delivered
    assert store.count_deliveries()["splunk"] == {"dead": 1, "pending": 4}


# ---- append-only ------------------------------------------------------------------------------------------------

REFUSED = (sqlite3.IntegrityError, sqlite3.OperationalError, psycopg.Error)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE records SET topic = 'x'",
        "DELETE FROM records",
        "UPDATE checkpoints SET hash = 'x'",
        "DELETE FROM checkpoints",
    ],
)
def test_records_and_checkpoints_are_append_only(store: AuditStore, store_url: str, sql: str) -> None:
    store.append([make_record(0)], route_all)
    write_checkpoints(store, SIGNER)
    with pytest.raises(REFUSED, match="append-only"):
        raw_execute(store_url, sql)
    assert store.count(RecordQuery()) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["records", "chain_heads"])
def test_postgres_refuses_truncate(pg_url: str, table: str) -> None:
    store = open_store(pg_url)
    try:
        store.append([make_record(0)], route_all)
        with pytest.raises(
            psycopg.Error, match=f"{table} are append-only" if table == "chain_heads" else "append-only"
        ):
            raw_execute(pg_url, f"TRUNCATE {table}")
    finally:
        store.close()


# ---- verify -----------------------------------------------------------------------------------------------------


def test_verify_passes_on_an_untouched_store(store: AuditStore) -> None:
    store.append([make_record(n, tenant=t) for n in range(20) for t in ("acme", "beta")], route_all)
    write_checkpoints(store, SIGNER)
    store.append([make_record(n) for n in range(20, 25)], route_all)
    report = verify(store, SIGNER)
    assert report.ok
    assert [(t.tenant, t.records, t.checkpoints) for t in report.tenants] == [("acme", 25, 1), ("beta", 20, 1)]
    assert verify(store, SIGNER, tenant="beta").to_dict()["tenants"][0]["records"] == 20


def test_verify_catches_an_edited_record(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n) for n in range(5)], route_all)
    victim = seq_of(store, "rec_acme_000002")
    tamper(
        store_url,
        [("UPDATE records SET body = replace(body, 'api-key.created', 'api-key.deleted') WHERE seq = ?", [victim])],
    )
    found = first_break(store)
    assert found is not None
    assert (found.kind, found.seq, found.record_id) == (BreakKind.EDITED, victim, "rec_acme_000002")  # type: ignore[attr-defined]


def test_verify_catches_an_edited_search_column(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n, key=FP_A) for n in range(3)], route_all)
    victim = seq_of(store, "rec_acme_000001")
    tamper(store_url, [("UPDATE records SET fingerprint = ? WHERE seq = ?", [FP_B, victim])])
    found = first_break(store)
    assert found is not None
    assert found.kind is BreakKind.EDITED  # type: ignore[attr-defined]
    assert "fingerprint" in found.detail  # type: ignore[attr-defined]


def test_verify_catches_a_deleted_record(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n) for n in range(5)], route_all)
    tamper(store_url, [("DELETE FROM records WHERE record_id = ?", ["rec_acme_000002"])])
    found = first_break(store)
    assert found is not None
    assert (found.kind, found.record_id) == (BreakKind.DELETED, "rec_acme_000003")  # type: ignore[attr-defined]


def test_verify_catches_an_inserted_record(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n) for n in range(3)] + [make_record(0, tenant="beta")], route_all)
    store.append([make_record(n) for n in range(3, 6)], route_all)
    # A well-formed forgery linked after record 2, given the seq a beta record held (that one removed: only acme's
    # chain is verified here).
    beta_seq = seq_of(store, "rec_beta_000000")
    (record_2,) = store.get(["rec_acme_000002"])
    forged = make_record(99, name="backdoor").chained(record_2.hash)
    overriding = "" if store_url.startswith("sqlite") else "OVERRIDING SYSTEM VALUE "
    tamper(
        store_url,
        [
            ("DELETE FROM records WHERE seq = ?", [beta_seq]),
            (
                f"INSERT INTO records (seq, {RECORD_COLUMNS}) {overriding}VALUES (?, {', '.join('?' * 15)})",
                [beta_seq, *record_row(forged)],
            ),
        ],
    )
    found = first_break(store, tenant="acme")
    assert found is not None
    assert (found.kind, found.record_id) == (BreakKind.INSERTED, "rec_acme_000099")  # type: ignore[attr-defined]


def test_verify_catches_records_appended_behind_the_chain_head(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n) for n in range(3)], route_all)
    (last,) = store.get(["rec_acme_000002"])
    forged = make_record(50).chained(last.hash)
    insert = f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({', '.join('?' * 15)})"  # noqa: S608 - constants
    tamper(store_url, [(insert, record_row(forged))])
    found = first_break(store)
    assert found is not None
    assert (found.kind, found.record_id) == (BreakKind.INSERTED, "rec_acme_000050")  # type: ignore[attr-defined]


def test_verify_catches_a_deleted_tail(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n) for n in range(5)], route_all)
    tamper(store_url, [("DELETE FROM records WHERE record_id IN (?, ?)", ["rec_acme_000003", "rec_acme_000004"])])
    found = first_break(store)
    assert found is not None
    assert found.kind is BreakKind.DELETED  # type: ignore[attr-defined]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_rewritten_tail_is_caught_only_by_a_checkpoint(store: AuditStore, store_url: str, checkpointed: bool) -> None:
    """Rewriting every hash from some record on leaves a consistent chain: only a signed checkpoint (a key the
    attacker does not hold) shows it. Without one, verify cannot tell, which is why checkpoints exist."""
    store.append([make_record(n) for n in range(6)], route_all)
    if checkpointed:
        write_checkpoints(store, SIGNER)
    originals = [r for _, r in store.search(RecordQuery(oldest_first=True))]
    statements = []
    prev = originals[1].hash
    for original in originals[2:]:
        forged = replace(original, topic="api-key.firstUsed").chained(prev)
        statements.append(
            (
                "UPDATE records SET topic = ?, body = ?, prev_hash = ?, hash = ? WHERE record_id = ?",
                [forged.topic, record_row(forged)[12], forged.prev_hash, forged.hash, forged.record_id],
            )
        )
        prev = forged.hash
    statements.append(("UPDATE chain_heads SET hash = ? WHERE tenant = 'acme'", [prev]))
    tamper(store_url, statements)

    found = first_break(store)
    if not checkpointed:
        assert found is None
        return
    assert found is not None
    assert (found.kind, found.record_id) == (BreakKind.REWRITTEN, "rec_acme_000005")  # type: ignore[attr-defined]


def test_a_deleted_tail_with_a_doctored_head_is_caught_by_the_checkpoint(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n) for n in range(4)], route_all)
    write_checkpoints(store, SIGNER)
    (kept,) = store.get(["rec_acme_000001"])
    tamper(
        store_url,
        [
            ("DELETE FROM records WHERE record_id IN (?, ?)", ["rec_acme_000002", "rec_acme_000003"]),
            ("UPDATE chain_heads SET seq = ?, hash = ?, length = 2", [seq_of(store, kept.record_id), kept.hash]),
        ],
    )
    found = first_break(store)
    assert found is not None
    assert found.kind is BreakKind.DELETED  # type: ignore[attr-defined]
    assert "checkpoint" in found.detail  # type: ignore[attr-defined]


def test_verify_catches_forged_missing_and_foreign_checkpoints(store: AuditStore, store_url: str) -> None:
    store.append([make_record(0)], route_all)
    write_checkpoints(store, SIGNER)
    store.append([make_record(1)], route_all)
    write_checkpoints(store, SIGNER)
    store.append([make_record(2)], route_all)
    write_checkpoints(store, SIGNER)
    assert first_break(store) is None

    other = first_break(store, HmacSigner(b"another key"))
    assert other is not None
    assert other.kind is BreakKind.CHECKPOINT  # type: ignore[attr-defined]
    assert "signed with key" in other.detail  # type: ignore[attr-defined]
    keyless = first_break(store, None)
    assert keyless is not None
    assert "no checkpoint key" in keyless.detail  # type: ignore[attr-defined]

    tamper(store_url, [("DELETE FROM checkpoints WHERE length = 2", [])])
    missing = first_break(store)
    assert missing is not None
    assert "missing" in missing.detail  # type: ignore[attr-defined]

    tamper(store_url, [("UPDATE checkpoints SET length = 7 WHERE length = 1", [])])
    forged = first_break(store)
    assert forged is not None
    assert (forged.kind, forged.seq) == (BreakKind.CHECKPOINT, 1)  # type: ignore[attr-defined]
    assert "forged" in forged.detail  # type: ignore[attr-defined]


def test_append_writes_periodic_checkpoints_to_the_store_and_the_log(store_url: str) -> None:
    periodic = open_store(store_url, signer=SIGNER, checkpoint_every=5)
    try:
        with capture_logs() as logs:
            for start in (0, 3, 6, 9):
                periodic.append([make_record(n) for n in range(start, start + 3)], route_all)
        written = [e for e in logs if e["event"] == "checkpoint_written"]
        assert [(e["kind"], e["length"]) for e in written] == [("periodic", 6), ("periodic", 12)]
        assert written[0]["signature"]
        report = verify(periodic, SIGNER)
        assert report.ok
        assert report.tenants[0].checkpoints == len(written)
    finally:
        periodic.close()


def test_unknown_tenant_is_reported(store: AuditStore) -> None:
    from audit.chain import UnknownTenant

    with pytest.raises(UnknownTenant):
        verify(store, SIGNER, tenant="nobody")


# ---- prune ------------------------------------------------------------------------------------------------------


def day(n: int) -> str:
    return f"2026-10-{n:02d}T12:00:00.000Z"


def test_prune_removes_a_prefix_and_the_chain_still_verifies(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n, received_at=day(n + 1)) for n in range(10)], route_all)
    store.append([make_record(n, tenant="beta", received_at=day(20)) for n in range(3)], route_all)
    store.record_outcomes("splunk", DeliveryOutcomes(delivered=["rec_acme_000000"]))

    with capture_logs() as logs:
        results = prune(store, SIGNER, day(5))
    by_tenant = {r.tenant: r for r in results}
    assert (by_tenant["acme"].removed, by_tenant["beta"].removed) == (4, 0)
    assert by_tenant["acme"].undelivered == 7  # 4 records x 2 sinks, one delivered
    assert by_tenant["acme"].anchor is not None
    assert by_tenant["acme"].anchor.kind is CheckpointKind.PRUNE
    assert [e["kind"] for e in logs if e["event"] == "checkpoint_written"] == ["prune"]
    assert store.get(["rec_acme_000003", "rec_acme_000004"])[0].record_id == "rec_acme_000004"
    assert store.deliveries("rec_acme_000000") == []
    assert verify(store, SIGNER).ok
    place = store.locate("rec_acme_000004")
    assert place is not None
    assert place.position == 5  # pruned records still count

    store.append([make_record(n, received_at=day(25)) for n in range(10, 12)], route_all)
    prune(store, SIGNER, day(8))
    assert verify(store, SIGNER).ok
    assert store.count(RecordQuery(tenant="acme")) == 5
    with pytest.raises(REFUSED, match="append-only"):
        raw_execute(store_url, "DELETE FROM records")  # the guard is back after prune


def test_prune_dry_run_and_refusals(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n, received_at=day(n + 1)) for n in range(6)], route_all)
    (dry,) = prune(store, SIGNER, day(4), dry_run=True)
    assert (dry.removed, dry.anchor) == (3, None)
    assert store.count(RecordQuery()) == 6

    tamper(
        store_url,
        [("UPDATE records SET body = replace(body, 'proj-1', 'proj-9') WHERE record_id = ?", ["rec_acme_000001"])],
    )
    with pytest.raises(ChainBroken, match="edited"):
        prune(store, SIGNER, day(4))
    assert store.count(RecordQuery()) == 6


def test_a_deleted_prune_anchor_is_caught(store: AuditStore, store_url: str) -> None:
    store.append([make_record(n, received_at=day(n + 1)) for n in range(6)], route_all)
    prune(store, SIGNER, day(3))
    tamper(store_url, [("DELETE FROM checkpoints WHERE kind = 'prune'", [])])
    found = first_break(store)
    assert found is not None
    assert found.kind is BreakKind.DELETED  # type: ignore[attr-defined]


def test_pruning_everything_leaves_a_verifiable_empty_chain(store: AuditStore) -> None:
    store.append([make_record(n, received_at=day(1)) for n in range(3)], route_all)
    (result,) = prune(store, SIGNER, day(2))
    assert result.removed == 3
    assert store.count(RecordQuery()) == 0
    assert verify(store, SIGNER).ok
    store.append([make_record(7, received_at=day(3))], route_all)
    assert verify(store, SIGNER).ok


# ---- migrations, connections, concurrency -------------------------------------------------------------------------


def test_reopening_applies_each_migration_once(store_url: str) -> None:
    for _ in range(2):
        open_store(store_url).close()
    versions = raw_fetch(store_url, "SELECT version FROM schema_version ORDER BY version")
    assert [v for (v,) in versions] == list(range(1, len(versions) + 1))
    assert len(versions) >= 1


def test_a_first_version_sqlite_store_is_migrated_and_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(MIGRATIONS[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    prev = GENESIS_HASH
    for n in range(3):
        record = make_record(n).chained(prev)
        insert = f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({', '.join('?' * 15)})"  # noqa: S608 - constants
        cursor = db.execute(insert, record_row(record))
        db.execute(
            "INSERT INTO chain_heads VALUES (?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, "
            "hash = excluded.hash",
            ("acme", cursor.lastrowid, record.hash),
        )
        prev = record.hash
    db.close()

    store = SqliteStore(path)
    try:
        assert verify(store, SIGNER).ok
        store.append([make_record(3)], route_all)
        report = verify(store, SIGNER)
        assert (report.ok, report.tenants[0].records) == (True, 4)
    finally:
        store.close()


def test_every_sqlite_connection_is_durable_at_commit(tmp_path: Path) -> None:
    """synchronous=FULL (2) on each connection the store opens: in WAL mode a commit then syncs the WAL, so a
    batch is on disk before `append` returns and its job leaves Redis. A power cut cannot be simulated here;
    this checks the setting that makes it so (NORMAL, 1, syncs only at checkpoints)."""
    store = SqliteStore(tmp_path / "audit.db")
    try:
        store.append([make_record(0)], route_all)  # a writing store also runs the checkpointer, on `connect()`
        with store.dialect.read() as writer:
            assert writer.one("PRAGMA synchronous")[0] == 2  # the writer
        with store.snapshot() as snapshot:
            assert snapshot.session.one("PRAGMA synchronous")[0] == 2  # a reader
        with closing(connect(tmp_path / "audit.db")) as checkpointer:
            assert checkpointer.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        store.close()


def test_an_unreachable_postgres_is_a_one_line_error() -> None:
    with pytest.raises(StoreUnavailable, match="PostgreSQL does not answer"):
        open_store("postgresql://postgres@127.0.0.1:1/keytrail_test?connect_timeout=2")


def test_an_unopenable_sqlite_path_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailable, match="cannot open"):
        open_store(f"sqlite:///{tmp_path / 'dir.db'}")


@pytest.mark.postgres
def test_concurrent_appenders_on_postgres_keep_every_chain_and_store_each_event_once(pg_url: str) -> None:
    open_store(pg_url).close()  # migrate once, before the race
    tenants, events = ("acme", "beta", "gamma"), 200
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=append_worker, args=(pg_url, tenants, events, seed, start, results)) for seed in (1, 2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert all(isinstance(outcome, tuple) for outcome in outcomes), outcomes
    assert sum(new for new, _ in outcomes) == len(tenants) * events
    assert sum(existing for _, existing in outcomes) == len(tenants) * events
    assert all(new > 0 for new, _ in outcomes)  # both really appended: the race happened

    store = open_store(pg_url)
    try:
        assert store.count(RecordQuery()) == len(tenants) * events
        duplicates = raw_fetch(pg_url, "SELECT tenant, event_id FROM records GROUP BY 1, 2 HAVING count(*) > 1")
        assert duplicates == []
        report = verify(store, SIGNER)
        assert report.ok, report.to_dict()
        assert all(t.records == events and t.checkpoints >= 1 for t in report.tenants)
        assert sum(store.count_deliveries()["archive"].values()) == len(tenants) * events
    finally:
        store.close()


def test_claim_sweeps_pending_and_retrying_for_one_sink(store: AuditStore) -> None:
    store.append([make_record(n) for n in range(6)], route_all)
    store.record_outcomes("splunk", DeliveryOutcomes(delivered=["rec_acme_000000"], dead={"rec_acme_000001": "400"}))
    store.record_outcomes("splunk", DeliveryOutcomes(retrying={"rec_acme_000002": ("503", "2026-11-01T00:00:00Z")}))

    owed = {r.record_id: attempts for r, attempts in store.claim("splunk", [], limit=100, owner="a", lease_seconds=60)}
    assert owed == {"rec_acme_000002": 1, "rec_acme_000003": 0, "rec_acme_000004": 0, "rec_acme_000005": 0}
    assert len(store.claim("archive", [], limit=2, owner="b", lease_seconds=60)) == 2
    assert len(store.claim("archive", [], limit=100, owner="c", lease_seconds=60)) == 4  # b holds the other two
    assert store.claim("nobody", [], limit=100, owner="d", lease_seconds=60) == []


# ---- delivery leases (two deliver jobs never send one record) ----------------------------------------------------


def claimed(store: AuditStore, owner: str, ids: list[str] | None = None, limit: int = 100) -> set[str]:
    return {r.record_id for r, _ in store.claim("splunk", ids or [], limit=limit, owner=owner, lease_seconds=600)}


def expire_leases(url: str) -> None:
    """Move every lease into the past, as the clock would after a dead job's lease ran out."""
    past = "0" if url.startswith("sqlite") else "now() - interval '1 hour'"
    raw_execute(url, f"UPDATE deliveries SET lease_until = {past} WHERE lease_until IS NOT NULL")  # noqa: S608 - constant


def test_a_leased_delivery_goes_to_one_owner_and_back_to_it_on_a_retried_run(store: AuditStore) -> None:
    store.append([make_record(n) for n in range(5)], route_all)
    every = {f"rec_acme_{n:06d}" for n in range(5)}

    first = claimed(store, "job:a", ["rec_acme_000000", "rec_acme_000001"], limit=1)
    assert len(first) == 3  # the named ones, then one swept
    assert {"rec_acme_000000", "rec_acme_000001"} <= first
    assert claimed(store, "job:b", sorted(every)) == every - first  # nothing job a holds
    assert claimed(store, "job:c") == set()
    assert claimed(store, "job:a") == first  # a retried or recovered run of job a takes back what a holds

    store.record_outcomes("splunk", DeliveryOutcomes(delivered=sorted(first)), owner="job:a")
    store.record_outcomes("splunk", DeliveryOutcomes(delivered=sorted(every - first)), owner="job:a")  # not a's
    states = {rid: {d.sink: d.state for d in store.deliveries(rid)}["splunk"] for rid in every}
    assert {rid for rid, state in states.items() if state is DeliveryState.DELIVERED} == first
    assert claimed(store, "job:c") == set()  # b still holds the rest; delivered ones are owed to nobody


def test_an_expired_lease_is_claimed_again_and_the_late_owner_cannot_overwrite(
    store: AuditStore, store_url: str
) -> None:
    store.append([make_record(0)], route_all)
    assert claimed(store, "job:dead", ["rec_acme_000000"]) == {"rec_acme_000000"}
    assert claimed(store, "job:b") == set()

    expire_leases(store_url)
    assert claimed(store, "job:b") == {"rec_acme_000000"}
    retry = DeliveryOutcomes(retrying={"rec_acme_000000": ("503", "2026-11-01T00:00:00Z")})
    store.record_outcomes("splunk", retry, owner="job:b")
    store.record_outcomes("splunk", DeliveryOutcomes(dead={"rec_acme_000000": "late"}), owner="job:dead")
    assert [d.state for d in store.deliveries("rec_acme_000000") if d.sink == "splunk"] == [DeliveryState.RETRYING]
    store.reset_deliveries("splunk", ["rec_acme_000000"])  # a replay clears the lease too
    assert claimed(store, "job:c") == {"rec_acme_000000"}
    store.record_outcomes("splunk", DeliveryOutcomes(delivered=["rec_acme_000000"]), owner="job:c")
    assert [d.state for d in store.deliveries("rec_acme_000000") if d.sink == "splunk"] == [DeliveryState.DELIVERED]
