"""Settings: one loader, every problem at once, environment overrides, secrets that never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Secret, load_settings, settings_from_mapping
from keytrail.cli import main


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(
            {
                "server": {"port": "eighty", "colour": "blue"},
                "tenants": {"acme": {}, "bad name!": {"token": "x"}},
                "sinks": [{"name": "s1"}, {"type": "file"}],
                "mystery": 1,
            },
            {},
        )
    problems = "\n".join(caught.value.problems)
    for expected in (
        "server.port: expected a whole number",
        "server.colour: unknown setting",
        "tenants.acme: set token, signing_secrets, or both",
        "tenants.bad name!",
        "sinks.s1.type: required",
        "sinks[1].name: required",
        "unknown setting 'mystery'",
    ):
        assert expected in problems


def test_environment_overrides_file_values_and_reads_toml_literals() -> None:
    settings = settings_from_mapping(
        {"server": {"port": 8080}, "tenants": {"Acme": {"token": "a"}}, "sinks": [{"name": "splunk", "type": "x"}]},
        {
            "KEYTRAIL_SERVER__PORT": "9001",
            "KEYTRAIL_INGEST__BATCH_MAX_EVENTS": "64",
            "KEYTRAIL_TENANTS__ACME__PROJECT_IDS": '["p1", "p2"]',
            "KEYTRAIL_SINKS__SPLUNK__INDEX": "security",
        },
    )
    assert settings.server.port == 9001
    assert settings.ingest.batch_max_events == 64
    assert settings.tenants["Acme"].project_ids == ("p1", "p2")
    assert settings.sinks[0].options["index"] == "security"


def test_secrets_come_from_env_or_file_and_never_print(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    settings = settings_from_mapping(
        {
            "tenants": {"a": {"token": "env:A_TOKEN", "signing_secrets": [f"file:{secret_file}"]}},
            "sinks": [{"name": "s", "type": "splunk_hec", "token": "env:HEC"}],
        },
        {"A_TOKEN": "from-env", "HEC": "hec-secret"},
    )
    tenant = settings.tenants["a"]
    assert tenant.token is not None
    assert tenant.token.reveal() == "from-env"
    assert tenant.signing_secrets[0].reveal() == "from-file"
    assert isinstance(settings.sinks[0].options["token"], Secret)
    for text in (repr(settings), str(settings), repr(tenant)):
        assert "from-env" not in text
        assert "from-file" not in text
        assert "hec-secret" not in text


def test_missing_secret_sources_are_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"tenants": {"a": {"token": "env:NOPE", "signing_secrets": ["file:/nope/x"]}}}, {})
    assert any("NOPE is not set" in p for p in caught.value.problems)
    assert any("cannot read secret file /nope/x" in p for p in caught.value.problems)


def test_no_file_means_embedded_defaults_but_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    assert load_settings(None, {}).source == "embedded defaults"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", {})


def test_invalid_toml_is_one_clear_problem(tmp_path: Path) -> None:
    broken = tmp_path / "k.toml"
    broken.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, {})


def test_routing_globs() -> None:
    settings = settings_from_mapping(
        {
            "tenants": {"a": {"token": "t"}},
            "sinks": [
                {"name": "crm", "type": "file", "topics": ["api-key.created", "api-key.firstUsed"]},
                {"name": "siem", "type": "file", "exclude_topics": ["api-key.firstUsed"], "tenants": ["a*"]},
            ],
        },
        {},
    )
    crm, siem = settings.sinks
    assert crm.routes("a", "api-key.firstUsed")
    assert not crm.routes("a", "api-key.deleted")
    assert siem.routes("acme", "project.updated")
    assert not siem.routes("acme", "api-key.firstUsed")
    assert not siem.routes("beta", "project.updated")


def test_config_check_lists_sink_option_problems_and_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "k.toml"
    config.write_text(
        '[tenants.a]\ntoken = "t"\n[[sinks]]\nname = "f"\ntype = "file"\nbogus = 1\n'
        '[[sinks]]\nname = "g"\ntype = "nosuch"\n'
    )
    assert main(["--config", str(config), "config", "check"]) == 1
    err = capsys.readouterr().err
    assert "sinks.f.path: required" in err
    assert "sinks.f.bogus: unknown option" in err
    assert "unknown sink type 'nosuch'" in err
    assert "Traceback" not in err


def test_config_check_shows_where_each_topic_goes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "k.toml"
    config.write_text(
        f'[tenants.a]\ntoken = "t"\n[[sinks]]\nname = "crm"\ntype = "file"\npath = "{tmp_path}/x"\n'
        'topics = ["api-key.created"]\n'
    )
    assert main(["--config", str(config), "config", "check", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"topic": "api-key.created",\n      "sinks": [\n        "crm"' in out
    assert '"topic": "project.updated",\n      "sinks": []' in out


def test_read_only_commands_do_not_generate_the_demo_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # embedded defaults: ./data
    assert main(["config", "check", "--format", "json"]) == 0
    assert not (tmp_path / "data" / "demo-token").exists()
    assert main(["simulate", "--count", "1"]) == 1
    assert "start `keytrail up`" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("postgresql://keytrail:s3cret@db/keytrail", "postgresql://keytrail:***@db/keytrail"),
        ("postgresql://keytrail@db/keytrail", "postgresql://keytrail@db/keytrail"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite:///data/keytrail.db", "sqlite:///data/keytrail.db"),
        # Everything up to the LAST '@' is user info: an unencoded '@' or '/' in a password must not leak its tail.
        ("redis://:PW1@PW2@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("redis://:pa/ss@redis.internal/0", "redis://:***@redis.internal/0"),
        ("postgresql://u@db/k?sslmode=require&password=pw", "postgresql://u@db/k?sslmode=require&password=***"),
    ],
)
def test_urls_in_messages_never_show_a_password(url: str, shown: str) -> None:
    from config.settings import display_url

    assert display_url(url) == shown


def test_a_redis_password_stays_out_of_the_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "k.toml"
    config.write_text('[redis]\nurl = "redis://:hunter2@127.0.0.1:1/0"\n')
    assert main(["--config", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert "Redis does not answer" in err
    assert "hunter2" not in err
