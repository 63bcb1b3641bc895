"""`keytrail audit ...` end to end through `keytrail.cli.main`, on a real store (SQLite, and PostgreSQL where the
command's SQL differs by backend)."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from stores_fixtures import (
    make_record,
    route_all,
    store_url_fixture,  # noqa: F401 - fixtures
    tamper,
)

from audit.chain import HmacSigner
from audit.stores import AuditStore, DeliveryOutcomes, RecordQuery, StoredRecord, open_store
from config import Settings, settings_from_mapping
from config.datadir import pepper
from events.redaction import fingerprint
from keytrail.cli import main
from keytrail.commands.audit import _export
from keytrail.record_output import record_table
from workers.normalize import record_id

RAW_KEY = "live_Zx8kP2mQ9vR4tY7uW1eS5dF3gH6jK0lA"


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@dataclass
class AuditCli:
    settings: Settings
    config: Path
    url: str
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> Ran:
        self.capsys.readouterr()
        try:
            code = main(["--config", str(self.config), "audit", *args])
        except SystemExit as exc:  # argparse's usage error: one line, exit 2
            code = exc.code if isinstance(exc.code, int) else 1
        captured = self.capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    def store(self, **options: object) -> AuditStore:
        return open_store(self.url, **options)  # type: ignore[arg-type]

    def append(self, records: list[object]) -> None:
        store = self.store()
        try:
            store.append(records, route_all)  # type: ignore[arg-type]
        finally:
            store.close()

    def fingerprint(self, raw: str) -> str:
        return fingerprint(pepper(self.settings), raw)


def _cli(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> AuditCli:
    data_dir = tmp_path / "data"
    config = tmp_path / "keytrail.toml"
    config.write_text(f'data_dir = "{data_dir}"\nlog_level = "info"\n[audit]\nurl = "{url}"\n', encoding="utf-8")
    settings = settings_from_mapping({"data_dir": str(data_dir), "audit": {"url": url}}, {})
    return AuditCli(settings, config, url, capsys)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AuditCli:
    """The CLI on a SQLite store."""
    return _cli(tmp_path, f"sqlite:///{tmp_path / 'data' / 'audit.db'}", capsys)


@pytest.fixture
def any_cli(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> AuditCli:
    """The CLI on each backend."""
    return _cli(tmp_path, store_url, capsys)


def one_line(ran: Ran) -> str:
    assert ran.code != 0
    assert ran.err.count("\n") == 1, ran.err
    assert ran.err.startswith(("keytrail: ", "keytrail audit ")), ran.err  # a failure, or a usage error
    assert "Traceback" not in ran.err
    return ran.err


# ---- search ---------------------------------------------------------------------------------------------------


def test_search_filters_and_pages_with_a_cursor(any_cli: AuditCli) -> None:
    key = any_cli.fingerprint(RAW_KEY)
    any_cli.append([make_record(n, key=key if n % 2 else None) for n in range(7)])
    any_cli.append([make_record(0, tenant="beta", key=key)])

    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(5):
        ran = any_cli("search", "--key", RAW_KEY, "--tenant", "acme", "--limit", "2", "--format", "json", *cursor)
        assert ran.code == 0, ran.err
        page = ran.json()
        assert isinstance(page, dict)
        seen += [r["record_id"] for r in page["records"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == ["rec_acme_000005", "rec_acme_000003", "rec_acme_000001"]
    assert RAW_KEY not in ran.out

    by_prefix = any_cli("search", "--key", "live_", "--format", "jsonl")
    assert [json.loads(line)["record_id"] for line in by_prefix.out.splitlines()] == [
        "rec_beta_000000",
        "rec_acme_000005",
        "rec_acme_000003",
        "rec_acme_000001",
    ]
    by_fingerprint = any_cli(
        "search", "--key", key, "--topic", "api-key.*", "--since", "2026-11-01", "--format", "json"
    )
    assert len(by_fingerprint.json()["records"]) == 4  # type: ignore[index]


def test_search_csv_and_jsonl_print_the_next_cursor_on_stderr(cli: AuditCli) -> None:
    cli.append([make_record(n, name="=HYPERLINK(evil)" if n == 2 else None) for n in range(3)])
    ran = cli("search", "--limit", "2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(ran.out)))
    assert [r["record_id"] for r in rows] == ["rec_acme_000002", "rec_acme_000001"]
    assert rows[0]["entity_name"] == "'=HYPERLINK(evil)"  # a spreadsheet would have run it
    assert ran.err.startswith("next page: --cursor ")
    cursor = ran.err.split()[-1]
    rest = cli("search", "--limit", "2", "--format", "jsonl", "--cursor", cursor)
    assert [json.loads(line)["record_id"] for line in rest.out.splitlines()] == ["rec_acme_000000"]
    assert rest.err == ""


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--since", "yesterday"], "since: not a time"),
        (["--entity-type", "robot"], "entity type 'robot'"),
        (["--cursor", "not-a-cursor"], "cursor"),
        (["--limit", "0"], "limit"),
        (["--since", "1d", "--until", "2d"], "since must be before until"),
        (["--key", " "], "key must not be empty"),
    ],
)
def test_bad_filters_are_one_line_errors(cli: AuditCli, args: list[str], reason: str) -> None:
    assert reason in one_line(cli("search", *args))


@pytest.mark.parametrize("width", [80, 100, 120, 160])
def test_the_table_fits_the_terminal_and_keeps_record_ids_whole(width: int) -> None:
    records = [
        replace(
            make_record(n, tenant="a-rather-long-tenant-name", key="fp_" + "c" * 32, name="billing service key"),
            record_id=record_id("acme", f"evt-{n}", "2026-11-28T10:00:00.000Z"),
        )
        for n in range(3)
    ]
    out = io.StringIO()
    Console(file=out, width=width).print(record_table(records, title="records: 3", width=width))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    assert all(any(r.record_id in line for line in lines) for r in records)
    assert any("2026-11-01 10:00:00" in line and "api-key" in line for line in lines)
    assert any("proj-1" in line for line in lines) == (width >= 120)
    assert any("billing" in line for line in lines) == (width >= 100)


def test_search_prints_a_table_when_asked(cli: AuditCli) -> None:
    cli.append([make_record(n) for n in range(2)])
    ran = cli("search", "--format", "table")
    assert "rec_acme_000001" in ran.out
    assert "records: 2" in ran.out


# ---- show, history ---------------------------------------------------------------------------------------------


def test_show_gives_the_record_its_chain_and_its_deliveries(any_cli: AuditCli) -> None:
    any_cli.append([make_record(n) for n in range(3)])
    store = any_cli.store()
    try:
        store.record_outcomes("splunk", DeliveryOutcomes(dead={"rec_acme_000001": "400 bad event"}))
    finally:
        store.close()

    detail = any_cli("show", "rec_acme_000001", "--format", "json").json()
    assert isinstance(detail, dict)
    assert detail["record"]["record_id"] == "rec_acme_000001"
    chain = detail["chain"]
    assert (chain["position"], chain["previous_record_id"], chain["next_record_id"]) == (
        2,
        "rec_acme_000000",
        "rec_acme_000002",
    )
    assert (chain["hash_ok"], chain["linked_to_previous"], chain["linked_from_next"]) == (True, True, True)
    assert {(d["sink"], d["state"]) for d in detail["deliveries"]} == {("archive", "pending"), ("splunk", "dead")}

    table = any_cli("show", "rec_acme_000001", "--format", "table")
    assert table.code == 0
    assert "400 bad event" in table.out
    assert "BROKEN" not in table.out
    assert "no record rec_nope" in one_line(any_cli("show", "rec_nope"))


def test_history_is_in_event_time_order(cli: AuditCli) -> None:
    key = "fp_" + "d" * 32
    cli.append(
        [
            make_record(0, key=key, topic="api-key.deleted", time="2026-11-03T00:00:00.000Z"),
            make_record(1, key=key, topic="api-key.created", time="2026-11-01T00:00:00.000Z"),
            make_record(2, key=key, topic="api-key.firstUsed", time="2026-11-02T00:00:00.000Z"),
            make_record(3, topic="api-key.created"),
        ]
    )
    ran = cli("history", "--key", key, "--format", "json")
    history = ran.json()
    assert isinstance(history, dict)
    assert [r["topic"] for r in history["records"]] == ["api-key.created", "api-key.firstUsed", "api-key.deleted"]
    capped = cli("history", "--key", key, "--limit", "2", "--format", "jsonl")
    assert len(capped.out.splitlines()) == 2
    assert "raise --limit" in capped.err
    assert "no records" in one_line(cli("history", "--key", "fp_" + "e" * 32))


# ---- tail ------------------------------------------------------------------------------------------------------


def test_tail_prints_the_latest_records_oldest_first(cli: AuditCli) -> None:
    cli.append([make_record(n) for n in range(5)])
    ran = cli("tail", "-n", "3", "--format", "jsonl")
    assert [json.loads(line)["record_id"] for line in ran.out.splitlines()] == [
        "rec_acme_000002",
        "rec_acme_000003",
        "rec_acme_000004",
    ]
    text = cli("tail", "-n", "1", "--format", "text")
    assert text.out.startswith("2026-11-01 10:00:04  acme  api-key.created")


def test_tail_follows_records_stored_after_it_started(any_cli: AuditCli) -> None:
    cli = any_cli
    cli.append([make_record(0), make_record(0, tenant="beta")])
    appended = threading.Event()

    def append_later() -> None:
        time.sleep(0.3)
        cli.append([make_record(1), make_record(2), make_record(1, tenant="beta")])
        appended.set()

    writer = threading.Thread(target=append_later)
    writer.start()
    ran = cli("tail", "-f", "--tenant", "acme", "-n", "1", "--interval", "0.1", "--timeout", "3", "--format", "jsonl")
    writer.join(timeout=10)
    assert appended.is_set()
    assert [json.loads(line)["record_id"] for line in ran.out.splitlines()] == [
        "rec_acme_000000",
        "rec_acme_000001",
        "rec_acme_000002",
    ]


def test_tail_refuses_an_unbounded_poll(cli: AuditCli) -> None:
    assert "--interval" in one_line(cli("tail", "-f", "--interval", "0"))


# ---- export ----------------------------------------------------------------------------------------------------


def test_export_streams_every_record_as_stored(any_cli: AuditCli, tmp_path: Path) -> None:
    any_cli.append([make_record(n, tenant="acme" if n % 4 else "beta") for n in range(2600)])
    out = tmp_path / "export.jsonl"
    ran = any_cli("export", "--tenant", "acme", "-o", str(out))
    assert ran.code == 0, ran.err
    assert ran.err == f"exported 1950 records to {out}\n"
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 1950
    assert [line["prev_hash"] for line in lines[1:]] == [line["hash"] for line in lines[:-1]]  # a whole chain

    stdout = any_cli("export", "--format", "csv", "--topic", "api-key.*", "--limit", "10")
    rows = list(csv.DictReader(io.StringIO(stdout.out)))
    assert len(rows) == 10
    assert rows[0]["record_id"] == "rec_beta_000000"
    assert rows[0]["fingerprint"] == ""


def test_export_drives_the_progress_bar_when_it_has_a_total() -> None:
    rows = [StoredRecord(n, json.dumps(make_record(n).to_dict())) for n in range(2500)]
    out = io.StringIO()
    assert _export(iter(rows), "jsonl", out, total=len(rows)) == 2500
    assert len(out.getvalue().splitlines()) == 2500


def test_export_to_an_unwritable_path_is_one_line(cli: AuditCli, tmp_path: Path) -> None:
    cli.append([make_record(0)])
    assert "cannot write" in one_line(cli("export", "-o", str(tmp_path / "missing" / "dir" / "x.jsonl")))


# ---- verify, checkpoint, prune ---------------------------------------------------------------------------------


def test_verify_exits_non_zero_on_a_tampered_store(any_cli: AuditCli) -> None:
    any_cli.append([make_record(n) for n in range(4)] + [make_record(0, tenant="beta")])
    ok = any_cli("verify", "--format", "json")
    assert ok.code == 0
    assert ok.json() == {
        "ok": True,
        "tenants": [
            {"tenant": "acme", "ok": True, "records": 4, "checkpoints": 0, "break": None},
            {"tenant": "beta", "ok": True, "records": 1, "checkpoints": 0, "break": None},
        ],
    }
    tamper(any_cli.url, [("UPDATE records SET body = replace(body, 'proj-1', 'proj-2') WHERE event_id = 'evt-2'", [])])
    broken = any_cli("verify")
    assert "tenant acme, edited at seq 3 (rec_acme_000002)" in one_line(broken)
    assert "edited" in broken.out
    assert any_cli("verify", "--tenant", "beta").code == 0
    assert "no chain for tenant 'gamma'" in one_line(any_cli("verify", "--tenant", "gamma"))


def test_checkpoint_signs_heads_with_a_key_kept_in_the_data_dir(cli: AuditCli) -> None:
    cli.append([make_record(n) for n in range(3)])
    first = cli("checkpoint", "--format", "table")
    assert first.out.startswith("checkpoint #1: acme at seq 3 (3 records)")
    assert "checkpoint_written" in first.err  # also on the log stream
    key = cli.settings.data_dir / "checkpoint-key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cli("checkpoint", "--format", "table").out == "no chain moved since its last checkpoint\n"
    report = cli("verify", "--format", "json").json()
    assert report["tenants"][0]["checkpoints"] == 1  # type: ignore[index]

    key.write_text("a different key\n", encoding="utf-8")
    assert "signed with key" in one_line(cli("verify"))
    key.unlink()
    assert "no checkpoint key" in one_line(cli("verify"))


def test_prune_needs_confirmation_and_keeps_the_chain_verifiable(any_cli: AuditCli) -> None:
    any_cli.append([make_record(n, received_at=f"2026-10-{n + 1:02d}T00:00:00.000Z") for n in range(6)])
    assert "--yes" in one_line(any_cli("prune", "--before", "2026-10-04"))
    dry = any_cli("prune", "--before", "2026-10-04", "--dry-run", "--format", "table")
    assert dry.out == "acme: would remove 3 records received before 2026-10-04T00:00:00.000Z (6 not yet delivered)\n"
    done = any_cli("prune", "--before", "2026-10-04", "--yes", "--format", "json").json()
    assert isinstance(done, dict)
    assert done["tenants"][0]["removed"] == 3
    assert done["tenants"][0]["anchor"]["kind"] == "prune"
    assert any_cli("verify").code == 0
    assert any_cli("search", "--format", "json").json()["records"][-1]["record_id"] == "rec_acme_000003"  # type: ignore[index]
    assert "not a time" in one_line(any_cli("prune", "--before", "soon", "--yes"))


def test_prune_refuses_a_broken_chain(cli: AuditCli) -> None:
    cli.append([make_record(n, received_at="2026-10-01T00:00:00.000Z") for n in range(3)])
    tamper(cli.url, [("DELETE FROM records WHERE event_id = 'evt-1'", [])])
    assert "refusing to prune a broken chain" in one_line(cli("prune", "--before", "2026-10-02", "--yes"))
    store = cli.store()
    try:
        assert store.count(RecordQuery()) == 2
    finally:
        store.close()


def test_an_unreachable_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = _cli(tmp_path, "postgresql://postgres@127.0.0.1:1/keytrail_test?connect_timeout=2", capsys)
    assert "audit store unavailable" in one_line(cli("search"))


def test_workers_signer_matches_the_cli_key(cli: AuditCli) -> None:
    """Periodic checkpoints written by a signed store verify with the key `audit verify` reads."""
    signer = HmacSigner.from_settings(cli.settings)
    store = cli.store(signer=signer, checkpoint_every=2)
    try:
        store.append([make_record(n) for n in range(4)], route_all)
    finally:
        store.close()
    report = cli("verify", "--format", "json").json()
    assert report["tenants"][0]["checkpoints"] == 1  # type: ignore[index]


# ---- hostile option values: one line and a non-zero exit, never a traceback ------------------------------------


def _cursor_at(seq: object) -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": seq, "o": "newest"}).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        # Each of these was a traceback (OverflowError, ValueError, or the store's integer overflow).
        (["search", "--since", "999999w"], "reaches back more than"),
        (["search", "--since", "0001-01-01T00:00:00+01:00"], "time out of range"),
        (["search", "--until", "9999-12-31T23:59:59-01:00"], "time out of range"),
        (["search", "--cursor", _cursor_at(2**70)], "cursor is not one this server issued"),
        (["history", "--key", "fp_" + "0" * 32, "--limit", "9" * 30], "limit must be between 1 and 1000000"),
        (["export", "--limit", "9" * 5000], "limit must be between"),
        (["export", "-o", "out\x00.jsonl"], "NUL"),
        (["prune", "--before", "999999w", "--dry-run"], "reaches back more than"),
        (["prune", "--before", "0001-01-01T00:00:00+01:00", "--dry-run"], "time out of range"),
        # Every other option of every subcommand is parsed as strictly.
        (["search", "--limit", "\u00b2"], "limit must be a whole number"),
        (["search", "--limit", "\u0661\u0660"], "limit must be a whole number"),
        (["search", "--tenant", "acme\x00"], "tenant must not contain control characters"),
        (["search", "--topic", "api-key\udcff"], "topic must not contain control characters or lone surrogates"),
        (["search", "--cursor", ""], "cursor must not be empty"),
        (["tail", "-n", "-1"], "lines must be a whole number"),
        (["tail", "--interval", "nan"], "interval must be a number of seconds"),
        (["tail", "--timeout", "inf"], "timeout must be a number of seconds"),
        (["show", "rec\x00"], "record id must not contain control characters"),
        (["show", " "], "record id must not be empty"),
        (["verify", "--tenant", ""], "tenant must not be empty"),
        (["checkpoint", "--tenant", "a\x1b[31m"], "tenant must not contain control characters"),
        (["prune", "--before", "90d", "--tenant", " ", "--dry-run"], "tenant must not be empty"),
    ],
)
def test_hostile_option_values_are_one_line_errors(cli: AuditCli, args: list[str], reason: str) -> None:
    assert reason in one_line(cli(*args))


# Edge values first: hypothesis draws the first branch of a `one_of` more often.
OPTION_VALUES = st.one_of(
    st.builds(
        "{}{}".format,
        st.one_of(st.sampled_from([999999, 5219, 36526]), st.integers(0, 10**8)),
        st.sampled_from("wdhms"),
    ),
    st.builds(
        "{:04d}-12-31T23:59:59{}".format,
        st.sampled_from([1, 9999, 0, 10000]),
        st.sampled_from(["+01:00", "-01:00", "", "Z"]),
    ),
    st.one_of(st.sampled_from([2**63, 2**70, -1]), st.integers(), st.text(max_size=3)).map(_cursor_at),
    st.sampled_from(["9" * 5000, "\u00b2", "0", "10001"]),
    st.text(max_size=30),
)
SEARCH_OPTIONS = ["--since", "--until", "--limit", "--cursor", "--tenant", "--topic", "--entity-type", "--key"]


@given(options=st.lists(st.tuples(st.sampled_from(SEARCH_OPTIONS), OPTION_VALUES), min_size=1, max_size=3))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_search_option_value_is_a_result_or_one_line(cli: AuditCli, options: list[tuple[str, str]]) -> None:
    ran = cli("search", "--format", "json", *(f"{name}={value}" for name, value in options))
    if ran.code == 0:
        assert isinstance(json.loads(ran.out)["records"], list)
    else:
        one_line(ran)
