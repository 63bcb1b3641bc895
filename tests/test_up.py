"""`keytrail up`, as README's first command runs it: private Redis, receiver, workers, then a clean Ctrl-C."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from harness import free_port, wait_until, write_config

from keytrail.cli import main


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
        f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "redis://127.0.0.1:6379/13"\n'
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
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
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
