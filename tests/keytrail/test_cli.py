"""The `keytrail` command line: `--config` before or after any (sub)command, for every command the parser has."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from keytrail.cli import Commands, build_parser, main, settings_from_args

Path_ = tuple[str, ...]

# Arguments a command cannot run without (a usage error would end it before it reads the config). A new command
# with a required argument fails the tests below with exit 2 until it is listed here.
REQUIRED: dict[Path_, list[str]] = {
    ("audit", "show"): ["rec_0"],
    ("audit", "history"): ["--key", "fp_0123456789abcdef0123456789abcdef"],
    ("audit", "prune"): ["--before", "90d", "--dry-run"],
}
# What the README and the issue name; the parser may grow, never lose one.
DOCUMENTED = {
    *(("audit", c) for c in ("search", "show", "history", "tail", "export", "verify", "checkpoint", "prune")),
    ("dlq", "list"),
    ("dlq", "replay"),
    ("config", "check"),
    *((c,) for c in ("subscribe", "unsubscribe", "fake-authapi", "up", "serve", "worker", "simulate", "status")),
}


def _walk(parser: argparse.ArgumentParser, path: Path_ = ()) -> Iterator[tuple[Path_, bool]]:
    """Every command path below `parser`, and whether it runs something (a leaf) or only groups subcommands."""
    groups = [action for action in parser._actions if isinstance(action, Commands)]
    if path:
        yield path, not groups
    for group in groups:
        for name, child in group.choices.items():
            yield from _walk(child, (*path, name))


PATHS = dict(_walk(build_parser()))
LEAVES = [path for path, leaf in PATHS.items() if leaf]


def _ids(path: Path_) -> str:
    return " ".join(path)


def _args(path: Path_) -> list[str]:
    return [*path, *REQUIRED.get(path, [])]


def _config(tmp_path: Path, name: str, body: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(body)
    return config


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYTRAIL_CONFIG", raising=False)


def test_every_documented_command_is_found_in_the_parser() -> None:
    assert set(LEAVES) >= DOCUMENTED


@pytest.mark.parametrize("path", LEAVES, ids=_ids)
def test_config_after_the_command_reaches_the_settings_and_wins(path: Path_, tmp_path: Path) -> None:
    before = _config(tmp_path, "before", f'data_dir = "{tmp_path / "before-data"}"\n')
    after = _config(tmp_path, "after", f'data_dir = "{tmp_path / "after-data"}"\n')
    parser = build_parser()

    only_after = parser.parse_args([*_args(path), "--config", str(after)])
    assert only_after.config == after  # what `up` and `worker` hand to the worker processes they start
    assert settings_from_args(only_after).data_dir == tmp_path / "after-data"

    only_before = parser.parse_args(["--config", str(before), *_args(path)])
    assert settings_from_args(only_before).data_dir == tmp_path / "before-data"

    both = parser.parse_args(["--config", str(before), *_args(path), "--config", str(after)])
    assert both.config == after
    assert settings_from_args(both).data_dir == tmp_path / "after-data"


@pytest.mark.parametrize("path", LEAVES, ids=_ids)
def test_a_bad_config_is_the_same_one_line_error_in_either_position(
    path: Path_, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = str(_config(tmp_path, "bad", '[server]\nport = "eighty"\n'))
    assert main(["--config", bad, *_args(path)]) == 1
    before = capsys.readouterr()
    assert main([*_args(path), "--config", bad]) == 1
    after = capsys.readouterr()
    assert before.err == after.err
    assert before.err.startswith("keytrail: config: server.port: expected a whole number")
    assert before.err.count("\n") == 1
    assert before.out == after.out == ""


@pytest.mark.parametrize("path", [(), *PATHS], ids=lambda path: _ids(path) or "keytrail")
def test_help_of_every_command_lists_config_and_which_one_wins(path: Path_, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps help to the terminal's width
    assert "--config FILE" in shown
    assert ("may also follow the command, where it wins" if not path else "overrides one before the command") in shown


def test_without_config_the_settings_come_from_the_usual_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _config(tmp_path, "keytrail", f'data_dir = "{tmp_path / "cwd-data"}"\n')
    args = build_parser().parse_args(["audit", "verify"])
    assert args.config is None
    assert settings_from_args(args).data_dir == tmp_path / "cwd-data"
