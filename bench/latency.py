"""Receipt → sink latency at a steady rate: `keytrail serve` + `keytrail worker` into a HEC peer that timestamps
each event's first arrival. Baseline in the same run: the receiver's own 202 round trip.

    .venv/bin/python bench/latency.py [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes.hec import FakeHec

REDIS_URL = "redis://127.0.0.1:6379/12"
TOKEN = "bench-token-0123456789"
HEC_TOKEN = "bench-hec-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def send(port: int, rate: float, seconds: float, connections: int = 32) -> tuple[dict[str, float], list[float]]:
    """Open loop at a fixed rate over raw keep-alive HTTP/1.1 connections (an HTTP client library would spend
    more CPU than the receiver on this shared machine, and its queueing would show up as receiver latency)."""
    sent: dict[str, float] = {}
    round_trips: list[float] = []
    total = int(rate * seconds)
    schedule: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    begin = time.perf_counter() + 0.2
    for index in range(total):
        schedule.put_nowait((index, begin + index / rate))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not schedule.empty():
                _, due = schedule.get_nowait()
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                event_id = str(uuid.uuid4())
                body = (
                    f'{{"id":"{event_id}","topic":"api-key.created","createdAt":"2026-11-28T10:00:00.000Z",'
                    f'"data":{{"key":"live_latencybenchkey{event_id[:12]}","name":"k","env":"live"}}}}'
                ).encode()
                request = (
                    f"POST /hooks/theauthapi/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"X-Keytrail-Token: {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                started = time.time()
                sent[event_id] = started
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 202"):
                    round_trips.append(time.time() - started)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return sent, round_trips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    work = Path(tempfile.mkdtemp(prefix="keytrail-bench-"))
    port = free_port()
    with FakeHec(tokens=[HEC_TOKEN], counting=True) as hec:
        config = work / "keytrail.toml"
        config.write_text(
            f'data_dir = "{work / "data"}"\nlog_level = "warning"\n[redis]\nurl = "{REDIS_URL}"\n'
            f'[audit]\nurl = "sqlite:///{work / "data" / "audit.db"}"\n[tenants.bench]\ntoken = "{TOKEN}"\n'
            f'[[sinks]]\nname = "splunk"\ntype = "splunk_hec"\nurl = "{hec.url}"\ntoken = "{HEC_TOKEN}"\n'
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        base = [sys.executable, "-m", "keytrail", "--config", str(config)]
        processes = [
            subprocess.Popen([*base, "serve", "--port", str(port)], cwd=ROOT, env=env),
            subprocess.Popen([*base, "worker"], cwd=ROOT, env=env),
        ]
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            time.sleep(1.0)  # let the workers register
            sent, round_trips = asyncio.run(send(port, args.rate, args.seconds))
            deadline = time.monotonic() + 60
            while hec.event_count < len(sent) and time.monotonic() < deadline:
                time.sleep(0.05)
            arrived = hec.first_seen()
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=30)
    redis.flushdb()
    latencies = [arrived[e] - t for e, t in sent.items() if e in arrived]
    ms = [1000 * v for v in latencies]
    rt = [1000 * v for v in round_trips]
    print(f"rate                      : {args.rate:.0f} events/s for {args.seconds:.0f}s ({len(sent)} events)")
    print(f"arrived at the HEC peer   : {len(latencies)} of {len(sent)}")
    print(
        f"receipt -> sink  p50/p99  : {statistics.median(ms):7.1f} / {percentile(ms, 0.99):7.1f} ms "
        f"(max {max(ms):.1f}; target p99 <= 250)"
    )
    print(f"receiver 202 rtt p50/p99  : {statistics.median(rt):7.1f} / {percentile(rt, 0.99):7.1f} ms (baseline)")
    print(f"ratio p99 / baseline p99  : {percentile(ms, 0.99) / percentile(rt, 0.99):7.1f}")
    return 0 if len(latencies) == len(sent) else 1


if __name__ == "__main__":
    raise SystemExit(main())
