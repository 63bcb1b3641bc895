"""Runs keytrail's RQ workers: one process per queue, each a SimpleWorker with a guardian thread (workers/guardian.py).

Why SimpleWorker: the jobs are keytrail's own, short and bounded by a timeout. Not forking a work horse per job
keeps the audit store connection and the sinks' connections (HEC keep-alive, syslog/RELP sessions) warm across
jobs, which is what makes batch delivery fast; isolation from a crashing job matters less than that here, and a
crashed worker's jobs are recovered by the guardian. Why one process per queue: RQ dequeues from a single queue
with BLMOVE into a recoverable list, but from several queues with BLPOP, where a job popped just before a crash
is gone (reference §4).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import structlog
from redis import Redis
from rq import Queue, SimpleWorker

from broker.queues import JobSerializer
from config.settings import Settings
from workers import runtime
from workers.guardian import Guardian

log = structlog.get_logger("keytrail.worker")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class KeytrailWorker(SimpleWorker):
    """An RQ SimpleWorker (see the module docstring for why) that keeps the process's runtime between jobs."""


def worker_name(queue: str) -> str:
    return f"keytrail-{queue}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_worker(settings: Settings, queue: str, *, burst: bool = False, with_scheduler: bool = True) -> bool:
    """Work one queue until stopped (or, with `burst`, until it is empty). Returns whether any job ran."""
    redis = Redis.from_url(settings.redis.url, socket_timeout=None, health_check_interval=30)
    runtime.install(runtime.Runtime.open(settings, redis))
    name = worker_name(queue)
    worker = KeytrailWorker(
        [Queue(queue, connection=redis, serializer=JobSerializer)],
        connection=redis,
        serializer=JobSerializer,
        name=name,
        maintenance_interval=60,
    )
    guardian = Guardian(redis, name, settings, queue=queue if with_scheduler else None)
    guardian.start()
    recovered = guardian.sweep()
    guardian.schedule()  # due retries first, also in burst mode
    log.info("worker_started", queue=queue, name=name, recovered=recovered)
    try:
        level = "DEBUG" if settings.log_level == "debug" else "WARNING"  # RQ logs lines per job at INFO
        # RQ's own scheduler would fork a process per worker; the guardian thread schedules (workers/scheduling.py).
        return bool(worker.work(burst=burst, with_scheduler=False, logging_level=level))
    finally:
        guardian.stop()
        runtime.uninstall()
        redis.close()


def spawn_worker(config: Path | None, queue: str) -> subprocess.Popen[bytes]:
    """Start a `keytrail worker --queue Q` child (the same entry point an operator would use)."""
    command = [sys.executable, "-m", "keytrail", *(["--config", str(config)] if config is not None else [])]
    return subprocess.Popen([*command, "worker", "--queue", queue], preexec_fn=_die_with_parent)  # noqa: S603, PLW1509


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM (a warm shutdown) if the supervisor dies, even by
    SIGKILL, so no worker is left orphaned. Elsewhere this does nothing."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_children(children: Sequence[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """Warm shutdown (SIGTERM: finish the current job), then SIGKILL what is still running after `timeout`."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
