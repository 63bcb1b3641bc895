"""`keytrail up | serve | worker`: run the receiver, the workers, or everything in one command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

from config import Secret, Settings, SinkSettings, TenantSettings
from config.datadir import DEMO_TOKEN_FILE, demo_token
from config.logging import configure_logging
from config.settings import display_url
from events.wire import hook_path
from keytrail.cli import CliError, Commands, settings_from_args

if TYPE_CHECKING:
    import uvicorn


def register(subparsers: Commands) -> None:
    up = subparsers.add_parser("up", help="receiver + workers + scheduler in one command (embedded defaults)")
    up.add_argument("--port", type=int, help="receiver port (default: server.port, 8080)")
    up.set_defaults(handler=cmd_up)

    serve = subparsers.add_parser("serve", help="run the webhook receiver (Starlette on uvicorn)")
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.set_defaults(handler=cmd_serve)

    worker = subparsers.add_parser("worker", help="run RQ workers (one process per queue) with their scheduler")
    worker.add_argument(
        "--queue", choices=["ingest", "deliver", "all"], default="all", help="which queue (default: all)"
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(handler=cmd_worker)


def with_embedded_defaults(settings: Settings, *, announce: bool, create: bool = True) -> Settings:
    """No tenants and no sinks configured: add the `demo` tenant and a JSON Lines file sink under the data dir.

    With `create` false (commands that only read), the demo token is never generated here; a missing one is a
    placeholder that verifies nothing."""
    if settings.tenants or settings.sinks:
        return settings
    if not create and not (settings.data_dir / DEMO_TOKEN_FILE).exists():
        token, created = Secret("not generated yet: run `keytrail up`"), False
    else:
        token, created = demo_token(settings.data_dir)
    if announce and created:
        print(f"demo tenant token (shown once, kept in {settings.data_dir / DEMO_TOKEN_FILE}): {token.reveal()}")
    return dataclasses.replace(
        settings,
        tenants={"demo": TenantSettings(name="demo", token=token)},
        sinks=(SinkSettings(name="file", type="file", options={"path": str(settings.data_dir / "audit.jsonl")}),),
    )


def _server(settings: Settings, host: str, port: int) -> uvicorn.Server:
    from ingest.server import build_server
    from keytrail.serving import create_app

    return build_server(create_app(settings), settings.server, host, port)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    settings = with_embedded_defaults(settings, announce=True)
    _check_redis(settings.redis.url)
    from ingest.server import serve

    serve(_server(settings, args.host or settings.server.host, args.port or settings.server.port))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    settings = with_embedded_defaults(settings, announce=False)
    _check_redis(settings.redis.url)
    from sinks import build_sinks

    for sink in build_sinks(settings).values():  # fail fast, with every problem, before taking work
        sink.close()
    from broker.queues import QUEUES
    from workers.runner import run_worker
    from workers.supervisor import Supervisor

    if args.queue != "all":
        run_worker(settings, args.queue, burst=args.burst)
        return 0
    if args.burst:
        for queue in QUEUES:
            run_worker(settings, queue, burst=True)
        return 0
    stopping: list[int] = []
    # SIGTERM (docker stop, systemd) must reach the children too; by default it would kill only this process.
    # Installed before the children exist, so no SIGTERM can fall between their start and the handler.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    supervisor = Supervisor(args.config, QUEUES)
    supervisor.start()
    try:
        supervisor.run(lambda: bool(stopping))
    finally:
        supervisor.stop()
        signal.signal(signal.SIGTERM, previous)
    return 1 if any(child.returncode not in (0, -signal.SIGTERM) for child in supervisor.children) else 0


def _check_redis(url: str) -> None:
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except RedisError:
        raise CliError(f"Redis does not answer at {display_url(url)}: start redis-server or set redis.url") from None


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


@contextlib.contextmanager
def private_redis(settings: Settings) -> Iterator[None]:
    """Start redis-server (AOF on, data in the data dir) when none answers at redis.url; stop it on exit."""
    url = settings.redis.url
    if _redis_answers(url):
        yield
        return
    binary = shutil.which("redis-server")
    parsed = urlparse(url)
    local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    if not (settings.redis.autostart and binary and local):
        raise CliError(
            f"Redis does not answer at {display_url(url)}; install it (e.g. apt-get install redis-server) "
            "or set redis.url"
        )
    redis_dir = (settings.data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = parsed.port or 6379
    assert binary is not None
    process = subprocess.Popen(  # noqa: S603
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            # A 202 must survive a crash, so every write is fsynced; group commit makes that one fsync per batch.
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--logfile",
            str(redis_dir / "redis.log"),
        ],
    )
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise CliError(f"could not start redis-server on port {port}; see {redis_dir / 'redis.log'}")
            time.sleep(0.1)
        print(f"started a private redis-server on 127.0.0.1:{port} (AOF in {redis_dir})")
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def _port_free(host: str, port: int) -> bool:
    """Whether the receiver can listen on host:port. With SO_REUSEADDR, as uvicorn binds: connections of a stopped
    receiver left in TIME-WAIT do not block a restart (without it, `up` refused for a minute), a listener does."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError:
            return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    settings = with_embedded_defaults(settings, announce=True)
    host, port = settings.server.host, args.port or settings.server.port
    if not _port_free(host, port):
        raise CliError(f"port {port} on {host} is in use; pass --port or set server.port")
    from broker.queues import QUEUES
    from ingest.server import serve
    from workers.supervisor import Supervisor

    with private_redis(settings):
        server = _server(settings, host, port)
        supervisor = Supervisor(args.config, QUEUES)
        supervisor.start()
        # Restarts stop as soon as uvicorn sees Ctrl-C/SIGTERM, so no worker starts during the shutdown.
        supervisor.run_in_thread(lambda: server.should_exit)
        print(f"keytrail is up: POST http://{host}:{port}{hook_path('<tenant>')}  (Ctrl-C stops)")
        try:
            serve(server)
        finally:
            supervisor.stop()
    return 0
