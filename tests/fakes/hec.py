"""A fake Splunk HTTP Event Collector: the HEC peer of keytrail's tests and benches, a real HTTP server on 127.0.0.1.

No Splunk can be installed here, so this is written from the HEC notes in /work/shared/reference/sinks.md §1 (the
section numbers below point there). It runs a Starlette app on uvicorn in a background thread, on a free port:

    with FakeHec(tokens=["t0ken"]) as hec:               # or: hec = FakeHec(...).start(); ...; hec.stop()
        sink = SplunkHecSink("splunk", hec.url, Secret("t0ken"))
        sink.send(records)
        assert [e["fields"]["event_id"] for e in hec.events] == [...]

Like the real peer
- Routes (§1.1): POST /services/collector, /services/collector/event, /services/collector/event/1.0;
  GET /services/collector/health[/1.0] → 200 code 17 without looking at the token; POST /services/collector/ack;
  OPTIONS on anything → 200; another method on /event → 405; an unknown path → 404 code 404.
- Auth (§1.2): `Authorization: Splunk <token>`, or Basic with the token as the password. No header → 401 code 2;
  a header without the `Splunk ` prefix → 401 code 3; an unknown token → 403 code 4; a disabled one → 403 code 1;
  `?token=` without a header → 400 code 16 (query-string auth is off, as on a default token).
- Body (§1.3, §1.4, §1.7): `Content-Encoding: gzip` is gunzipped, any other encoding → 415 with an HTML body; a body
  over `max_content_length` bytes as sent → 413; an empty one → 400 code 5. The body is read as concatenated JSON
  objects. The first bad object ends the request with 400 and `invalid-event-number` N, and the objects before it
  stay indexed: malformed JSON (NaN and Infinity included), a non-object, or `event` null/false → code 6; no
  `event` → 12; a blank string event → 13; `fields` that are not flat strings (or lists of strings) → 15; an
  `index` outside `indexes` → 7, whose N points one past the bad object, as the probe saw. An unknown top-level key
  answers 200 but silently indexes nothing from that object on (probe).
- Indexer acks (§1.5): tokens in `ack_tokens` have useACK. Their requests need a channel (`X-Splunk-Request-Channel`
  or `?channel=`; missing → 400 code 10, not a GUID → 400 code 11) and each 200 carries an `ackId`, per channel,
  from 0. `POST /services/collector/ack?channel=…` with {"acks": [ids]} answers {"acks": {"<id>": bool}}: an id reads
  true once it is `ack_delay` seconds old (None: never), is then forgotten and reads false again; another channel's
  id reads false. /ack with a token that has no useACK → 400 code 14. Ack state is per instance, as it is per
  indexer: two instances behind a load balancer (tests/fakes/lb.py) are two indexers, each numbering the same
  channel from 0, each reading false for the other's ids. `acked_event_ids` holds the `fields.event_id`s of the
  requests whose ackId has read true, i.e. what this indexer itself confirmed.

Fault injection
- `enqueue(status, code=..., times=N, after=M, endpoint="event"|"ack")`: after M more normal requests, the next N
  requests to that endpoint get this answer before anything else is checked, as from a load balancer or a busy
  indexer: `enqueue(503, code=9, times=3)`, `enqueue(413)`, `enqueue(503, code=9, after=1)`.
- `reject_when`: called with each parsed object; a HEC code it returns refuses that object exactly as the fake
  refuses one that fails its own checks (400 + `invalid-event-number`, the objects before it indexed).
- `down()` / `up()`: stop listening (connections are refused), then listen again on the same port; state is kept.
- `latency`: seconds every answer waits (settable while running).

Counting mode (`counting=True`, for benches): no stored envelopes and no request log, only counters and the set of
`fields.event_id` values; `events` and `requests` then raise.

Not emulated: /raw, a token's default index, TRUNCATE, limits on pending acks, idle-channel cleanup, TLS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import socket
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_TOKEN = "3f1b9c2e-5d4a-4e8f-9a7b-0c1d2e3f4a5b"
# limits.conf [http_input] max_content_length in recent Splunk Enterprise (§1.4).
MAX_CONTENT_LENGTH = 838_860_800

EVENT_PATHS = frozenset({"/services/collector", "/services/collector/event", "/services/collector/event/1.0"})
HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})
ACK_PATH = "/services/collector/ack"
ENVELOPE_KEYS = frozenset({"time", "host", "source", "sourcetype", "index", "event", "fields"})

# The HEC code table (§1.6).
TEXTS: dict[int, str] = {
    0: "Success",
    1: "Token disabled",
    2: "Token is required",
    3: "Invalid authorization",
    4: "Invalid token",
    5: "No data",
    6: "Invalid data format",
    7: "Incorrect index",
    8: "Internal server error",
    9: "Server is busy",
    10: "Data channel is missing",
    11: "Invalid data channel",
    12: "Event field is required",
    13: "Event field cannot be blank",
    14: "ACK is disabled",
    15: "Error in handling indexed fields",
    16: "Query string authorization is not enabled",
    17: "HEC is healthy",
    18: "HEC is unhealthy, queues are full",
    19: "HEC is unhealthy, ack service unavailable",
    20: "HEC is unhealthy, queues are full, ack service unavailable",
    21: "Invalid token",
    22: "Token disabled",
}

Endpoint = Literal["event", "ack"]
# An unknown top-level key: the real peer answers 200 and quietly indexes nothing from that object on.
_STOP_QUIETLY = -1


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer of the fake: a JSON payload, or an HTML/raw body (415, scripted bodies)."""

    status: int
    payload: dict[str, Any] | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    @classmethod
    def hec(cls, status: int, code: int, **extra: Any) -> Answer:
        return cls(status, {"text": TEXTS.get(code, HTTPStatus(status).phrase), "code": code, **extra})

    def response(self) -> Response:
        if self.payload is not None:
            return JSONResponse(self.payload, status_code=self.status, headers=dict(self.headers))
        return Response(self.body, status_code=self.status, headers=dict(self.headers), media_type=self.media_type)

    @property
    def code(self) -> int | None:
        code = (self.payload or {}).get("code")
        return code if isinstance(code, int) else None


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """What the fake saw of one POST to an event path (kept unless counting); never the token."""

    path: str
    status: int
    code: int | None
    content_encoding: str | None
    channel: str | None
    wire_bytes: int
    indexed: int


@dataclass(slots=True)
class _Channel:
    next_ack_id: int = 0
    # ackId -> monotonic time from which it reads true; removed once read true.
    pending: dict[int, float] = field(default_factory=dict)
    # ackId -> the event_ids of its request, confirmed when the id reads true.
    batches: dict[int, list[str]] = field(default_factory=dict)


class FakeHec:
    """A fake HEC on 127.0.0.1; see the module docstring for what it reproduces. Thread-safe to inspect."""

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        ack_tokens: Iterable[str] = (),
        disabled_tokens: Iterable[str] = (),
        indexes: Iterable[str] | None = None,
        max_content_length: int = MAX_CONTENT_LENGTH,
        ack_delay: float | None = 0.0,
        latency: float = 0.0,
        counting: bool = False,
        reject_when: Callable[[dict[str, Any]], int | None] | None = None,
        port: int = 0,
    ) -> None:
        self.ack_tokens = frozenset(ack_tokens)
        self.disabled_tokens = frozenset(disabled_tokens)
        self.tokens = frozenset(tokens) | self.ack_tokens
        self.indexes = frozenset(indexes) if indexes is not None else None
        self.max_content_length = max_content_length
        self.ack_delay = ack_delay
        self.latency = latency
        self.counting = counting
        self.reject_when = reject_when
        self._port = port
        self._lock = threading.Lock()
        # Scripted answers in order; None lets one request through to the normal checks.
        self._scripted: dict[Endpoint, deque[Answer | None]] = {"event": deque(), "ack": deque()}
        self._channels: dict[str, _Channel] = {}
        self._events: list[dict[str, Any]] = []
        self._requests: list[SeenRequest] = []
        self._event_ids: set[str] = set()
        self._acked_event_ids: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._event_count = 0
        self._duplicate_count = 0
        self._request_count = 0
        self._ack_poll_count = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST", "PUT", "OPTIONS"])])

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fake HEC has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL a sink is configured with (`http://127.0.0.1:<port>`)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fake-hec", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the fake HEC did not start on 127.0.0.1:{self._port}")
            time.sleep(0.002)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10.0)

    def down(self) -> None:
        """Stop listening: new connections are refused until `up()`. Stored events and counters are kept."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- fault injection ---------------------------------------------------------------------------------------------

    def enqueue(
        self,
        status: int,
        *,
        code: int | None = None,
        text: str | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        after: int = 0,
        endpoint: Endpoint = "event",
    ) -> None:
        """Answer `times` requests to `endpoint` with this, before any other check, once `after` more requests have
        been handled normally. Without `body` the answer is HEC-shaped: {"text": text or the code's text, "code": code}.
        """
        if body is not None:
            answer = Answer(status, body=body, headers=dict(headers or {}), media_type="text/plain")
        else:
            default = TEXTS[code] if code in TEXTS else HTTPStatus(status).phrase
            payload: dict[str, Any] = {"text": text or default}
            if code is not None:
                payload["code"] = code
            answer = Answer(status, payload, headers=dict(headers or {}))
        with self._lock:
            self._scripted[endpoint].extend([None] * after + [answer] * times)

    def reset(self) -> None:
        """Forget stored events, counters, scripted answers and ack channels."""
        with self._lock:
            for queue in self._scripted.values():
                queue.clear()
            self._channels.clear()
            self._events.clear()
            self._requests.clear()
            self._event_ids.clear()
            self._acked_event_ids.clear()
            self._first_seen.clear()
            self._event_count = self._duplicate_count = self._request_count = self._ack_poll_count = 0

    # -- inspection --------------------------------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every indexed envelope, in order (duplicates included)."""
        self._refuse_when_counting("events")
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[SeenRequest]:
        """Every POST to an event path, in order, scripted answers included."""
        self._refuse_when_counting("requests")
        with self._lock:
            return list(self._requests)

    @property
    def event_ids(self) -> set[str]:
        """The distinct `fields.event_id` values of indexed events."""
        with self._lock:
            return set(self._event_ids)

    @property
    def acked_event_ids(self) -> set[str]:
        """The `fields.event_id` values of requests whose ackId this indexer answered true."""
        with self._lock:
            return set(self._acked_event_ids)

    @property
    def event_count(self) -> int:
        """Indexed events, duplicates included."""
        with self._lock:
            return self._event_count

    @property
    def duplicate_count(self) -> int:
        """Indexed events whose `fields.event_id` had been indexed before."""
        with self._lock:
            return self._duplicate_count

    @property
    def request_count(self) -> int:
        """POSTs to an event path, whatever the answer."""
        with self._lock:
            return self._request_count

    @property
    def ack_poll_count(self) -> int:
        with self._lock:
            return self._ack_poll_count

    def first_seen(self) -> dict[str, float]:
        """event_id -> wall-clock time it first arrived (kept in counting mode too: the latency bench reads it)."""
        with self._lock:
            return dict(self._first_seen)

    def _refuse_when_counting(self, what: str) -> None:
        if self.counting:
            raise RuntimeError(f"the fake HEC keeps no {what} in counting mode; use event_ids / event_count")

    # -- HTTP --------------------------------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        path = "/" + request.url.path.strip("/")
        if request.method == "OPTIONS":
            return Response(status_code=200)
        if path in HEALTH_PATHS and request.method == "GET":
            return Answer.hec(200, 17).response()
        if path in EVENT_PATHS or path == ACK_PATH:
            if request.method != "POST":
                return Answer(405, {"text": "Method Not Allowed", "code": 405}).response()
            body = await request.body()
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if path == ACK_PATH:
                return self._ack(request.headers, request.query_params, body).response()
            return self._event(path, request.headers, request.query_params, body).response()
        return Answer(404, {"text": "The requested URL was not found on this server.", "code": 404}).response()

    def _next_scripted(self, endpoint: Endpoint) -> Answer | None:
        with self._lock:
            queue = self._scripted[endpoint]
            return queue.popleft() if queue else None

    def _event(self, path: str, headers: Headers, query: QueryParams, body: bytes) -> Answer:
        encoding = headers.get("content-encoding")
        channel = headers.get("x-splunk-request-channel") or query.get("channel")
        answer, envelopes, ack_channel = self._ingest(headers, query, body, channel)
        with self._lock:
            self._request_count += 1
            if envelopes:
                self._index(envelopes)
            if ack_channel is not None:
                answer = self._issue_ack_id(answer, ack_channel, envelopes)
            if not self.counting:
                self._requests.append(
                    SeenRequest(path, answer.status, answer.code, encoding, channel, len(body), len(envelopes))
                )
        return answer

    def _ingest(  # noqa: PLR0911 - one return per HEC check, in HEC's order
        self, headers: Headers, query: QueryParams, body: bytes, channel: str | None
    ) -> tuple[Answer, list[dict[str, Any]], str | None]:
        """Check and parse one POST: (answer, envelopes indexed, the channel to issue an ackId on)."""
        scripted = self._next_scripted("event")
        if scripted is not None:
            return scripted, [], None
        if len(body) > self.max_content_length:
            return Answer(413, {"text": "Content too large", "code": 413}), [], None
        token = self._authenticate(headers, query)
        if isinstance(token, Answer):
            return token, [], None
        if token in self.ack_tokens and (refused := _check_channel(channel)) is not None:
            return refused, [], None
        encoding = (headers.get("content-encoding") or "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return Answer.hec(400, 6, **{"invalid-event-number": 0}), [], None
        elif encoding != "identity":
            page = b"<html><body><h1>415 Unsupported Media Type</h1></body></html>"
            return Answer(415, body=page, media_type="text/html"), [], None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Answer.hec(400, 6, **{"invalid-event-number": 0}), [], None
        if not text.strip():
            return Answer.hec(400, 5), [], None
        envelopes, refusal = parse_batch(text, indexes=self.indexes, reject_when=self.reject_when)
        if refusal is not None:
            code, number = refusal
            return Answer.hec(400, code, **{"invalid-event-number": number}), envelopes, None
        return Answer.hec(200, 0), envelopes, channel if token in self.ack_tokens else None

    def _authenticate(self, headers: Headers, query: QueryParams) -> str | Answer:  # noqa: PLR0911 - one per HEC code
        header = headers.get("authorization")
        if header is None:
            return Answer.hec(400, 16) if "token" in query else Answer.hec(401, 2)
        scheme, _, credential = header.strip().partition(" ")
        token = credential.strip()
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return Answer.hec(401, 3)
        elif scheme.lower() != "splunk":
            return Answer.hec(401, 3)
        if not token:
            return Answer.hec(401, 3)
        if token in self.disabled_tokens:
            return Answer.hec(403, 1)
        if token not in self.tokens:
            return Answer.hec(403, 4)
        return token

    def _index(self, envelopes: list[dict[str, Any]]) -> None:
        """Store accepted envelopes; the caller holds the lock."""
        for envelope in envelopes:
            fields = envelope.get("fields")
            event_id = fields.get("event_id") if isinstance(fields, dict) else None
            if isinstance(event_id, str):
                if event_id in self._event_ids:
                    self._duplicate_count += 1
                else:
                    self._event_ids.add(event_id)
                    self._first_seen[event_id] = time.time()
        self._event_count += len(envelopes)
        if not self.counting:
            self._events.extend(envelopes)

    def _issue_ack_id(self, answer: Answer, channel: str, envelopes: list[dict[str, Any]]) -> Answer:
        """Give a successful request on a useACK token its ackId; the caller holds the lock."""
        state = self._channels.setdefault(channel, _Channel())
        ack_id = state.next_ack_id
        state.next_ack_id += 1
        ready_at = time.monotonic() + self.ack_delay if self.ack_delay is not None else float("inf")
        state.pending[ack_id] = ready_at
        state.batches[ack_id] = [
            str(e["fields"]["event_id"])
            for e in envelopes
            if isinstance(e.get("fields"), dict) and "event_id" in e["fields"]
        ]
        return Answer(answer.status, {**(answer.payload or {}), "ackId": ack_id}, headers=answer.headers)

    def _ack(self, headers: Headers, query: QueryParams, body: bytes) -> Answer:
        with self._lock:
            self._ack_poll_count += 1
        scripted = self._next_scripted("ack")
        if scripted is not None:
            return scripted
        token = self._authenticate(headers, query)
        if isinstance(token, Answer):
            return token
        if token not in self.ack_tokens:
            return Answer.hec(400, 14)
        channel = headers.get("x-splunk-request-channel") or query.get("channel")
        refused = _check_channel(channel)
        if refused is not None or channel is None:
            return refused or Answer.hec(400, 10)
        try:
            asked = json.loads(body)["acks"]
            ids = [int(ack_id) for ack_id in asked]
        except (ValueError, TypeError, KeyError):
            return Answer.hec(400, 6)
        now = time.monotonic()
        acks: dict[str, bool] = {}
        with self._lock:
            state = self._channels.get(channel)
            for ack_id in ids:
                ready_at = state.pending.get(ack_id) if state is not None else None
                if state is not None and ready_at is not None and ready_at <= now:
                    del state.pending[ack_id]
                    self._acked_event_ids.update(state.batches.pop(ack_id, []))
                    acks[str(ack_id)] = True
                else:
                    acks[str(ack_id)] = False
        return Answer(200, {"acks": acks})


def _check_channel(channel: str | None) -> Answer | None:
    if not channel:
        return Answer.hec(400, 10)
    try:
        uuid.UUID(channel)
    except ValueError:
        return Answer.hec(400, 11)
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_batch(
    text: str,
    *,
    indexes: frozenset[str] | None = None,
    reject_when: Callable[[dict[str, Any]], int | None] | None = None,
) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """Read concatenated envelopes as HEC does: (the objects indexed, None or (code, invalid-event-number))."""
    decoder = json.JSONDecoder(parse_constant=_refuse_constant)
    envelopes: list[dict[str, Any]] = []
    position, length = 0, len(text)
    while True:
        while position < length and text[position] in " \t\r\n":
            position += 1
        if position >= length:
            return envelopes, None
        number = len(envelopes)
        try:
            obj, position = decoder.raw_decode(text, position)
        except ValueError:
            return envelopes, (6, number)
        code = check_envelope(obj, indexes)
        if code is None and reject_when is not None:
            code = reject_when(obj)
        if code == _STOP_QUIETLY:
            return envelopes, None
        if code is not None:
            return envelopes, (code, number + 1 if code == 7 else number)
        envelopes.append(obj)


def check_envelope(obj: Any, indexes: frozenset[str] | None) -> int | None:  # noqa: PLR0911 - one return per HEC code
    """The HEC code that refuses this one envelope, or None when it would be indexed."""
    if not isinstance(obj, dict):
        return 6
    if not obj.keys() <= ENVELOPE_KEYS:
        return _STOP_QUIETLY
    if "event" not in obj:
        return 12
    event = obj["event"]
    if event is None or event is False:
        return 6
    if isinstance(event, str) and not event.strip():
        return 13
    if "time" in obj and not _is_time(obj["time"]):
        return 6
    if any(key in obj and not isinstance(obj[key], str) for key in ("host", "source", "sourcetype", "index")):
        return 6
    if "fields" in obj and not _flat_fields(obj["fields"]):
        return 15
    if indexes is not None and "index" in obj and obj["index"] not in indexes:
        return 7
    return None


def _is_time(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _flat_fields(fields: Any) -> bool:
    if not isinstance(fields, dict):
        return False
    return all(
        isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))
        for value in fields.values()
    )
