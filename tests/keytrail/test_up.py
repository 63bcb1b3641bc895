"""`keytrail up`, as README's first command runs it: private Redis, receiver, workers, then a clean Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import REDIS_URL, ServerThread, free_port, wait_until, write_config

from keytrail.cli import main
from keytrail.commands.run import _port_free


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
def test_up_starts_everything_on_embedded_defaults_and_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    http_port, redis_port = free_port(), free_port()
    config = tmp_path / "keytrail.toml"
    # Embedded defaults (no tenants, no sinks) apart from where things live, so the test cannot touch other data.
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "redis://127.0.0.1:{redis_port}/0"\n'
        f'[audit]\nurl = "sqlite:///{tmp_path / "data" / "keytrail.db"}"\n'
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "keytrail", "--config", str(config), "up", "--port", str(http_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = wait_until(lambda: _ready(http_port), timeout=30, interval=0.2)
        assert ready, "keytrail up did not become ready"
        assert _port_open(redis_port), "the private redis-server is not listening"
        token = (tmp_path / "data" / "demo-token").read_text().strip()
        assert main(["--config", str(config), "simulate", "--url", f"http://127.0.0.1:{http_port}"]) == 0
        assert "16 x 202" in capsys.readouterr().out

        def stored() -> int:
            main(["--config", str(config), "audit", "search", "--format", "json", "--limit", "100"])
            return len(json.loads(capsys.readouterr().out)["records"])

        assert wait_until(lambda: stored() == 16, timeout=30, interval=0.5)
        shipped = (tmp_path / "data" / "audit.jsonl").read_text()
        assert len(shipped.splitlines()) == 16
        assert token not in shipped
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0
    assert "demo tenant token" in out
    assert not _port_open(http_port)
    assert not _port_open(redis_port), "the private redis-server outlived keytrail up"
    assert (tmp_path / "data" / "redis" / "appendonlydir").exists() or any((tmp_path / "data" / "redis").glob("*.aof"))


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_worker_supervisor_passes_sigterm_to_its_children(tmp_path: Path, redis: object) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{REDIS_URL}"\n'
        f'[audit]\nurl = "sqlite:///{tmp_path / "data" / "keytrail.db"}"\n'
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "keytrail", "--config", str(config), "worker"], stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(lambda: len(_children(supervisor.pid)) == 2, timeout=20, interval=0.2)
        children = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=10)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def _children(pid: int) -> list[int]:
    """The children of every thread of `pid` (`up` restarts workers from a thread of its own)."""
    text = ""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            text += " " + (task / "children").read_text()
    return [int(p) for p in text.split()]


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path, redis: object) -> None:
    config = write_config(tmp_path)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "keytrail", "--config", str(config), "worker"], stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(lambda: len(_children(supervisor.pid)) == 2, timeout=20, interval=0.2)
        children = _children(supervisor.pid)
        supervisor.kill()  # SIGKILL: no chance to stop its children itself
        supervisor.wait(timeout=10)
        assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=20)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def _time_wait_on(port: int) -> int:
    """How many TCP sockets on local port `port` are in TIME-WAIT (state 06 in /proc/net/tcp)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "06")


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_port_probe_allows_a_restart_while_old_connections_sit_in_time_wait() -> None:
    port = free_port()
    with ServerThread(_hello, port=port) as server:
        assert not _port_free("127.0.0.1", port)  # a listener is "in use"
        for _ in range(3):
            # `Connection: close`: the server closes first, so its side of the connection enters TIME-WAIT.
            assert httpx.get(server.url, headers={"connection": "close"}, timeout=5).text == "ok"
    assert _time_wait_on(port) > 0, "the test needs connections in TIME-WAIT on the server's port"
    assert _port_free("127.0.0.1", port)
    with ServerThread(_hello, port=port) as restarted:  # and the restart does bind, at once
        assert httpx.get(restarted.url, timeout=5).text == "ok"


def _ingest_child(pid: int) -> int | None:
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if b"\0ingest" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def test_up_restarts_a_killed_worker_and_events_sent_after_the_kill_become_records(
    tmp_path: Path, redis: object, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)  # no tenants or sinks: the demo tenant and the file sink
    http_port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "keytrail", "--config", str(config), "up", "--port", str(http_port)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        assert wait_until(lambda: _ready(http_port) and _ingest_child(up.pid) is not None, timeout=30, interval=0.2)
        killed = _ingest_child(up.pid)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        # Sent while the ingest worker is dead: accepted (202), and must not wait for a restart of `up`.
        assert main(["--config", str(config), "simulate", "--url", f"http://127.0.0.1:{http_port}"]) == 0
        assert "16 x 202" in capsys.readouterr().out

        def stored() -> int:
            main(["--config", str(config), "audit", "search", "--format", "json", "--limit", "100"])
            return len(json.loads(capsys.readouterr().out)["records"])

        assert wait_until(lambda: stored() == 16, timeout=40, interval=0.5)
        assert _ingest_child(up.pid) not in (None, killed)
        assert _ready(http_port)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    assert up.returncode == 0
    restarts = [json.loads(line) for line in log.read_text().splitlines() if '"worker_restarted"' in line]
    assert [(entry["queue"], entry["exit_code"]) for entry in restarts] == [("ingest", -signal.SIGKILL)]
