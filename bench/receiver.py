"""Receiver throughput against a bare POST handler, measured with wrk in the same run.

Prints requests/s for both, the ratio (target >= 0.60), keytrail's p99 latency and the receiver's peak RSS.
Each server is one uvicorn process on 127.0.0.1; rounds alternate bare/keytrail so machine noise hits both.
Both servers get the same requests, each with both verification headers (`X-Keytrail-Token` and
`theauthapi-signature`, in its static form) and a distinct event GUID and raw key.

The defaults measure what earlier figures measured: a Starlette route as the baseline, and a bench tenant that
checks only the token (the signature header is ignored). `--baseline asgi --verify both` is the stricter
comparison of issue 10: the plainest handler (no routing, no JSON) against a tenant that checks both headers.

    .venv/bin/python bench/receiver.py [--seconds 8] [--rounds 2] [--connections 32] [--baseline asgi]
        [--verify both] [--redis-url redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

REDIS_URL = "redis://127.0.0.1:6379/12"
TOKEN = "bench-token-0123456789"
SIGNING_SECRET = "whsec_benchsigningsecret0123456789"  # the bench tenant's, nobody else's
ROOT = Path(__file__).resolve().parent.parent

BARE_APPS = {
    # A Starlette route answering JSON: the baseline of every figure before issue 10.
    "starlette": """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hook(request):
    body = await request.body()
    return JSONResponse({"event_id": str(len(body))}, status_code=202)

app = Starlette(routes=[Route("/hooks/theauthapi/{tenant}", hook, methods=["POST"])])
""",
    # The plainest handler uvicorn can run: read the body, answer 202 with fixed bytes; no routing, no JSON.
    "asgi": """
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"{}"})
""",
}

# Every request carries a distinct event GUID and a raw key, like real deliveries.
WRK_SCRIPT = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Keytrail-Token"] = "%(token)s"
wrk.headers["theauthapi-signature"] = "%(secret)s"
request = function()
  counter = counter + 1
  local body = string.format('{"id":"evt-%%d-%%d","topic":"api-key.created","createdAt":"2026-11-28T10:00:00.000Z",'
    .. '"projectId":"p-1","accountId":"a-1","data":{"key":"live_benchkeybenchkeybenchkey%%08d","name":"k",'
    .. '"env":"live","projectId":"p-1","isActive":true,"createdAt":"2026-11-28T10:00:00.000Z"}}',
    math.random(1, 1000000000), counter, counter)
  return wrk.format(nil, "/hooks/theauthapi/bench", nil, body)
end
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/hooks/theauthapi/bench",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  warning: {non2xx.group(1)} non-2xx responses", file=sys.stderr)
    return rps, float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis-url", default=REDIS_URL, help="e.g. a Redis with appendfsync always")
    parser.add_argument(
        "--baseline", choices=sorted(BARE_APPS), default="starlette", help="the bare handler (default: starlette)"
    )
    parser.add_argument(
        "--verify", choices=["token", "both"], default="token", help="what the bench tenant checks (default: token)"
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench/receiver.py needs wrk (apt-get install wrk)")
    redis = Redis.from_url(args.redis_url)
    work = Path(tempfile.mkdtemp(prefix="keytrail-bench-"))
    (work / "bare.py").write_text(BARE_APPS[args.baseline])
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT % {"token": TOKEN, "secret": SIGNING_SECRET})
    signing = f'signing_secrets = ["{SIGNING_SECRET}"]\n' if args.verify == "both" else ""
    config = work / "keytrail.toml"
    config.write_text(
        f'data_dir = "{work / "data"}"\nlog_level = "warning"\n[redis]\nurl = "{args.redis_url}"\n'
        f'[ingest]\nhigh_water_mark = 100000000\n[tenants.bench]\ntoken = "{TOKEN}"\n{signing}'
        f'[[sinks]]\nname = "file"\ntype = "file"\npath = "{work / "out.jsonl"}"\n'
    )
    results: dict[str, list[float]] = {"bare": [], "keytrail": []}
    p99s: list[float] = []
    rss: list[float] = []
    for _ in range(args.rounds):
        for name in ("bare", "keytrail"):
            redis.flushdb()
            port = free_port()
            if name == "bare":
                command = [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(work),
                    "bare:app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ]
            else:
                command = [sys.executable, "-m", "keytrail", "--config", str(config), "serve", "--port", str(port)]
            server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                wait_port(port)
                rps, p99 = run_wrk(port, script, args.seconds, args.connections)
                results[name].append(rps)
                if name == "keytrail":
                    p99s.append(p99)
                    rss.append(peak_rss_mb(server.pid))
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=20)
            print(f"  {name:9s} {rps:9.0f} req/s  p99 {p99:7.2f} ms", file=sys.stderr)
    bare, ours = statistics.median(results["bare"]), statistics.median(results["keytrail"])
    print(f"bare {args.baseline:9s} handler : {bare:9.0f} req/s (median of {args.rounds})")
    print(f"keytrail receiver      : {ours:9.0f} req/s (verify {args.verify} + redact + group commit to Redis)")
    print(f"ratio                  : {ours / bare:9.2f}  (target >= 0.60)")
    print(f"keytrail p99 latency   : {statistics.median(p99s):9.2f} ms at {args.connections} connections")
    print(f"keytrail peak RSS      : {max(rss):9.1f} MiB")
    redis.flushdb()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
