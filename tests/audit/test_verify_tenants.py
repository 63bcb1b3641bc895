"""Chain heads guarded like records and checkpoints; `audit verify` covering every configured tenant, not only the
ones the store lists (a tenant whose records were all deleted must not drop out of the report)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from stores_fixtures import (  # noqa: F401 - fixtures
    SIGNER,
    make_record,
    pg_url_fixture,
    raw_execute,
    raw_fetch,
    route_all,
    store_fixture,
    store_url_fixture,
    tamper,
)

from audit.chain import verify, write_checkpoints
from audit.stores import AuditStore, open_store
from keytrail.cli import main

REFUSED = (sqlite3.IntegrityError, sqlite3.OperationalError, psycopg.Error)
HEAD = "SELECT tenant, seq, hash, length, checkpointed FROM chain_heads ORDER BY tenant"

# ---- chain_heads are guarded ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("DELETE FROM chain_heads", id="delete"),
        pytest.param("UPDATE chain_heads SET seq = seq - 1, length = length - 1", id="set-back-to-hide-a-tail"),
        pytest.param("UPDATE chain_heads SET hash = 'x'", id="hash"),
        pytest.param("UPDATE chain_heads SET length = length + 1", id="length"),
        pytest.param("UPDATE chain_heads SET seq = seq + 100, length = length + 100", id="forward-onto-nothing"),
        pytest.param("UPDATE chain_heads SET checkpointed = 0", id="checkpointed-back"),
        pytest.param("UPDATE chain_heads SET tenant = 'other'", id="tenant"),
    ],
)
def test_chain_heads_refuse_update_and_delete(store: AuditStore, store_url: str, sql: str) -> None:
    store.append([make_record(n) for n in range(3)], route_all)
    write_checkpoints(store, SIGNER)
    before = raw_fetch(store_url, HEAD)
    with pytest.raises(REFUSED, match="chain_heads are append-only"):
        raw_execute(store_url, sql)
    assert raw_fetch(store_url, HEAD) == before
    store.append([make_record(3)], route_all)  # the append path still moves the head
    assert verify(store, SIGNER).ok


def test_a_head_cannot_be_moved_onto_another_tenants_record(store: AuditStore, store_url: str) -> None:
    store.append([make_record(0), make_record(0, tenant="globex"), make_record(1, tenant="globex")], route_all)
    (seq, hash_) = raw_fetch(store_url, "SELECT seq, hash FROM records WHERE tenant = 'globex' ORDER BY seq DESC")[0]
    with pytest.raises(REFUSED, match="chain_heads are append-only"):
        raw_execute(
            store_url, "UPDATE chain_heads SET seq = ?, hash = ?, length = 2 WHERE tenant = 'acme'", (seq, hash_)
        )


# ---- verify covers every configured tenant ----------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    config: Path
    url: str
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> Ran:
        self.capsys.readouterr()
        code = main(["--config", str(self.config), "audit", *args])
        captured = self.capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    def append(self, records: list[object]) -> None:
        store = open_store(self.url)
        try:
            store.append(records, route_all)  # type: ignore[arg-type]
        finally:
            store.close()


def make_cli(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str], tenants: tuple[str, ...]) -> Cli:
    config = tmp_path / "keytrail.toml"
    lines = [f'data_dir = "{tmp_path / "data"}"', "[audit]", f'url = "{url}"']
    for tenant in tenants:
        lines += [f"[tenants.{tenant}]", f'token = "token-for-{tenant}"']
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Cli(config, url, capsys)


@pytest.fixture
def cli(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The CLI on each backend, with acme, globex and initech configured."""
    return make_cli(tmp_path, store_url, capsys, ("acme", "globex", "initech"))


def one_line(ran: Ran) -> str:
    assert ran.err.count("\n") == 1, ran.err
    assert ran.err.startswith("keytrail: "), ran.err
    return ran.err


@pytest.mark.parametrize(
    ("checkpointed", "also", "reported"),
    [
        (True, ["DELETE FROM chain_heads WHERE tenant = 'acme'"], "2 checkpoints but no records"),
        (True, [], "2 checkpoints but no records"),
        (False, [], "its chain head names 7 records but no records are stored"),
    ],
)
def test_deleting_every_record_of_a_configured_tenant_is_a_break(
    cli: Cli, checkpointed: bool, also: list[str], reported: str
) -> None:
    cli.append([make_record(n) for n in range(5)] + [make_record(n, tenant="globex") for n in range(3)])
    if checkpointed:
        assert cli("checkpoint").code == 0
    cli.append([make_record(n) for n in range(5, 7)])
    if checkpointed:
        assert cli("checkpoint", "--tenant", "acme").code == 0
    assert cli("verify").code == 0

    statements = [
        "DELETE FROM deliveries WHERE record_id IN (SELECT record_id FROM records WHERE tenant = 'acme')",
        "DELETE FROM records WHERE tenant = 'acme'",
        *also,
    ]
    tamper(cli.url, [(sql, []) for sql in statements])

    broken = cli("verify")
    assert broken.code == 1
    assert f"first: tenant acme, deleted: {reported}" in one_line(broken)
    report = json.loads(cli("verify", "--format", "json").out)
    by_tenant = {t["tenant"]: t for t in report["tenants"]}
    assert by_tenant["acme"]["ok"] is False
    assert by_tenant["acme"]["break"]["detail"] == reported
    assert by_tenant["globex"]["ok"] is True
    assert cli("verify", "--tenant", "acme").code == 1


def test_a_configured_tenant_without_data_is_reported_as_no_records(cli: Cli) -> None:
    cli.append([make_record(n, tenant="globex") for n in range(3)])
    ran = cli("verify", "--format", "table")
    assert ran.code == 0, ran.err
    rows = {line.split()[0]: line for line in ran.out.splitlines() if line.strip().startswith(("acme", "initech"))}
    assert "no records" in rows["acme"]
    assert "no records" in rows["initech"]

    report = json.loads(cli("verify", "--format", "json").out)
    assert report["ok"] is True
    assert [t["tenant"] for t in report["tenants"]] == ["acme", "globex", "initech"]
    assert report["tenants"][0] == {"tenant": "acme", "ok": True, "records": 0, "checkpoints": 0, "break": None}
    only = cli("verify", "--tenant", "acme", "--format", "table")
    assert (only.code, "no records" in only.out) == (0, True)


@pytest.mark.parametrize("where", ["postgres", "sqlite"])
def test_verify_that_cannot_reach_the_store_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    (tmp_path / "dir.db").mkdir()
    url = {
        "postgres": "postgresql://postgres@127.0.0.1:1/keytrail_test?connect_timeout=2",
        "sqlite": f"sqlite:///{tmp_path / 'dir.db'}",
    }[where]
    ran = make_cli(tmp_path, url, capsys, ("acme",))("verify")
    assert ran.code == 2
    assert "audit store unavailable" in one_line(ran)
