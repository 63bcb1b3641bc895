"""Dead letters: a rejected delivery is kept with its reason, listed, and replayed from the audit store."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import REDIS_URL, ServerThread, signed_headers, write_config
from redis import Redis

from broker.queues import DELIVER_QUEUE, INGEST_QUEUE
from config import load_settings
from ingest.app import create_app
from keytrail.cli import main
from keytrail.simulation import TOPICS, make_delivery
from workers.runner import run_worker

PLUGINS = str(Path(__file__).parent.parent / "plugins")


@pytest.fixture
def plugins() -> Iterator[None]:
    sys.path.insert(0, PLUGINS)
    yield
    sys.path.remove(PLUGINS)


def test_rejected_records_are_listed_then_replayed_once_the_peer_accepts(
    tmp_path: Path, redis: Redis, plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    switch, out = tmp_path / "rejecting", tmp_path / "crm.jsonl"
    switch.write_text("on")
    config = write_config(
        tmp_path,
        f'[tenants.acme]\ntoken = "{signed_headers()["x-keytrail-token"]}"\n'
        f'[[sinks]]\nname = "crm"\ntype = "flaky_sinks:RejectingSink"\npath = "{out}"\nswitch = "{switch}"\n'
        f'topics = ["api-key.*"]\n'
        f'[[sinks]]\nname = "archive"\ntype = "file"\npath = "{tmp_path / "archive.jsonl"}"\n',
    )
    settings = load_settings(config, {})

    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        for topic in TOPICS:
            delivery = make_delivery(settings.tenants["acme"], topic)
            assert (
                client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers).status_code
                == 202
            )
    run_worker(settings, INGEST_QUEUE, burst=True)
    run_worker(settings, DELIVER_QUEUE, burst=True)
    capsys.readouterr()

    assert main(["--config", str(config), "dlq", "list", "--format", "json"]) == 0
    dead = json.loads(capsys.readouterr().out)
    api_key_topics = [t for t in TOPICS if t.startswith("api-key.")]
    assert sorted(row["topic"] for row in dead) == sorted(api_key_topics)
    assert {row["sink"] for row in dead} == {"crm"}
    assert all("unknown field" in row["reason"] for row in dead)

    assert main(["--config", str(config), "dlq", "replay", "--dry-run"]) == 0
    assert f"would replay {len(api_key_topics)} to crm" in capsys.readouterr().out
    assert not out.exists()

    switch.unlink()  # the CRM was fixed
    assert main(["--config", str(config), "dlq", "replay", "--sink", "crm"]) == 0
    assert f"replayed {len(api_key_topics)} to crm" in capsys.readouterr().out
    run_worker(settings, DELIVER_QUEUE, burst=True)
    capsys.readouterr()  # the worker's own log lines
    delivered = [json.loads(line)["event_id"] for line in out.read_text().splitlines()]
    assert len(delivered) == len(set(delivered)) == len(api_key_topics)
    assert main(["--config", str(config), "dlq", "list", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # The healthy sink was never involved.
    assert len((tmp_path / "archive.jsonl").read_text().splitlines()) == len(TOPICS)
    assert main(["--config", str(config), "status", "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    by_sink = {row["sink"]: row for row in status["deliveries"]}
    assert by_sink["crm"]["delivered"] == len(api_key_topics)
    assert by_sink["crm"]["dead"] == 0
    assert by_sink["archive"]["delivered"] == len(TOPICS)


def test_replay_of_an_unknown_sink_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "k.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[audit]\nurl = "sqlite:///{tmp_path / "a.db"}"\n[tenants.a]\ntoken = "t"\n'
        f'[[sinks]]\nname = "f"\ntype = "file"\npath = "{tmp_path / "x"}"\n'
    )
    assert main(["--config", str(config), "dlq", "replay", "--sink", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no sink named 'nope'" in err


def test_deliveries_to_a_sink_removed_from_the_config_become_dead_letters(
    tmp_path: Path, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    base = (
        f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{REDIS_URL}"\n'
        f'[audit]\nurl = "sqlite:///{tmp_path / "data" / "audit.db"}"\n'
        f'[tenants.acme]\ntoken = "{signed_headers()["x-keytrail-token"]}"\n'
        f'[[sinks]]\nname = "archive"\ntype = "file"\npath = "{tmp_path / "archive.jsonl"}"\n'
    )
    config = tmp_path / "keytrail.toml"
    config.write_text(base + f'[[sinks]]\nname = "old"\ntype = "file"\npath = "{tmp_path / "old.jsonl"}"\n')
    settings = load_settings(config, {})
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        delivery = make_delivery(settings.tenants["acme"], "api-key.created")
        assert client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers).status_code == 202
    run_worker(settings, INGEST_QUEUE, burst=True)
    config.write_text(base)  # the operator removes the "old" sink before the deliveries run
    run_worker(load_settings(config, {}), DELIVER_QUEUE, burst=True)
    capsys.readouterr()
    assert main(["--config", str(config), "dlq", "list", "--format", "json"]) == 0
    dead = json.loads(capsys.readouterr().out)
    assert [(row["sink"], row["reason"]) for row in dead] == [("old", "sink no longer configured")]
    assert not (tmp_path / "old.jsonl").exists()
    assert len((tmp_path / "archive.jsonl").read_text().splitlines()) == 1


def test_a_sink_its_peer_disabled_holds_nothing_back_and_replay_re_enables_it(
    tmp_path: Path, redis: Redis, plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    switch, out = tmp_path / "gone", tmp_path / "crm.jsonl"
    switch.write_text("410")
    config = write_config(
        tmp_path,
        f'[tenants.acme]\ntoken = "{signed_headers()["x-keytrail-token"]}"\n'
        f'[[sinks]]\nname = "crm"\ntype = "flaky_sinks:GoneSink"\npath = "{out}"\nswitch = "{switch}"\n',
    )
    settings = load_settings(config, {})

    def deliver_one(topic: str) -> None:
        with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
            delivery = make_delivery(settings.tenants["acme"], topic)
            response = client.post("/hooks/theauthapi/acme", content=delivery.body, headers=delivery.headers)
            assert response.status_code == 202
        run_worker(settings, INGEST_QUEUE, burst=True)
        run_worker(settings, DELIVER_QUEUE, burst=True)

    deliver_one("api-key.created")  # the peer answers 410: the sink is disabled
    switch.unlink()  # even though the peer is back, a disabled sink is not tried until an operator says so
    deliver_one("api-key.updated")
    capsys.readouterr()
    assert not out.exists()
    assert main(["--config", str(config), "status", "--format", "json"]) == 0
    crm = json.loads(capsys.readouterr().out)["deliveries"][0]
    assert (crm["sink"], crm["disabled"], crm["dead"]) == ("crm", True, 2)

    assert main(["--config", str(config), "dlq", "replay", "--sink", "crm"]) == 0
    run_worker(settings, DELIVER_QUEUE, burst=True)
    capsys.readouterr()
    assert len(out.read_text().splitlines()) == 2
    assert main(["--config", str(config), "status", "--format", "json"]) == 0
    crm = json.loads(capsys.readouterr().out)["deliveries"][0]
    assert (crm["disabled"], crm["delivered"], crm["dead"]) == (False, 2, 0)
