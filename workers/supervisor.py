"""Keeps one worker process per queue running: a child that dies is restarted after a growing, capped backoff.

Without this, a worker killed by the OOM killer or `kill -9` left its queue without a consumer until the whole
`keytrail up` (or `keytrail worker`) was restarted, while the receiver kept answering 202. The backoff (doubling
from `RESTART_BASE_SECONDS` to `RESTART_CAP_SECONDS`, back to the base once a child has run `STABLE_SECONDS`)
keeps a child that cannot start (Redis gone, a broken sink) from spinning; the supervisor never gives up, because
a queue without a consumer is the stall this exists to end. `/readyz` reports the gap meanwhile (ingest/health.py).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from broker.queues import QUEUES
from workers.runner import spawn_worker, stop_children

log = structlog.get_logger("keytrail.supervisor")
RESTART_BASE_SECONDS = 1.0
RESTART_CAP_SECONDS = 30.0
STABLE_SECONDS = 60.0


@dataclass
class _Slot:
    """One queue's worker: the current child, and how its restarts are going."""

    queue: str
    child: subprocess.Popen[bytes]
    started: float
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts a `keytrail worker --queue Q` child per queue and restarts any that exits while it supervises."""

    def __init__(self, config: Path | None, queues: Sequence[str] = QUEUES) -> None:
        self.config = config
        self.queues = tuple(queues)
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()  # `check` may run in a thread while `stop` runs in the main one
        self._stopped = False

    @property
    def children(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [slot.child for slot in self._slots]

    def start(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._slots = [_Slot(queue, spawn_worker(self.config, queue), now) for queue in self.queues]

    def check(self) -> None:
        """One pass: note children that exited, and restart those whose backoff is over."""
        now = time.monotonic()
        with self._lock:
            if self._stopped:
                return
            for slot in self._slots:
                code = slot.child.poll()
                if code is None:
                    if now - slot.started >= STABLE_SECONDS:
                        slot.failures = 0
                    continue
                if slot.restart_at is None:
                    slot.failures += 1
                    delay = min(RESTART_CAP_SECONDS, RESTART_BASE_SECONDS * 2 ** (slot.failures - 1))
                    slot.restart_at = now + delay
                    log.warning("worker_exited", queue=slot.queue, exit_code=code, restart_in_seconds=delay)
                elif now >= slot.restart_at:
                    self._restart(slot, code, now)

    def _restart(self, slot: _Slot, code: int, now: float) -> None:
        try:
            child = spawn_worker(self.config, slot.queue)
        except OSError as exc:  # out of processes or memory: try again after the next backoff
            slot.failures += 1
            slot.restart_at = now + min(RESTART_CAP_SECONDS, RESTART_BASE_SECONDS * 2 ** (slot.failures - 1))
            log.error("worker_restart_failed", queue=slot.queue, error=type(exc).__name__)
            return
        slot.child, slot.started, slot.restart_at = child, now, None
        log.warning("worker_restarted", queue=slot.queue, exit_code=code, pid=child.pid, attempt=slot.failures)

    def run(self, stopping: Callable[[], bool], interval: float = 0.2) -> None:
        """Supervise until `stopping()` holds (checked before every restart, so none starts during a shutdown)."""
        while not stopping():
            self.check()
            time.sleep(interval)

    def run_in_thread(self, stopping: Callable[[], bool]) -> threading.Thread:
        """`run` in a daemon thread. Linux ties a child's parent-death signal (workers/runner.py) to the thread that
        started it: children restarted from here get SIGTERM when this thread ends, which is at shutdown."""
        thread = threading.Thread(target=self.run, args=(stopping,), name="keytrail-supervisor", daemon=True)
        thread.start()
        return thread

    def stop(self, timeout: float = 15) -> None:
        """No more restarts; warm shutdown of every child (see `stop_children`)."""
        with self._lock:
            self._stopped = True
            children = [slot.child for slot in self._slots]
        stop_children(children, timeout=timeout)
