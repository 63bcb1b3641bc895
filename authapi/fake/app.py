"""The fake's HTTP surface: Starlette routes for The Auth API's management API and the test-only admin routes."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from authapi.fake.entities import Json
from authapi.fake.errors import FakeApiError
from authapi.fake.state import FakeState, RecordedRequest


@dataclass(frozen=True, slots=True)
class Call:
    caller: Json | None
    params: Mapping[str, str]
    query: Mapping[str, str]
    body: Json


Operation = Callable[[Call], Any]


class DroppedConnection(Response):
    """Starts a 200 and closes the connection mid-body: the client cannot tell whether the change was made."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        # Returning before the body is complete makes uvicorn close the connection.


async def _json_object(request: Request) -> Json:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise FakeApiError(400, "Unexpected token in JSON body") from None
    if not isinstance(body, dict):
        raise FakeApiError(400, "the request body must be a JSON object")
    return body


def _endpoint(
    state: FakeState, operation: Operation, *, status: int = 200, admin: bool = False, change: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if not admin:
                state.take_fault()
            body = await _json_object(request) if request.method in ("POST", "PATCH", "PUT") else {}
            caller = None if admin else state.authenticate(request.headers.get("x-api-key"))
            if not admin:
                state.record(RecordedRequest(request.method, request.url.path, dict(request.query_params), body))
            call = Call(caller, dict(request.path_params), dict(request.query_params), body)
            result = operation(call)
            if inspect.isawaitable(result):
                result = await result
            fault = state.change_faults.next_fault() if change else None
            if fault == "drop":
                return DroppedConnection()
            if fault == "error":
                raise FakeApiError(500, "Internal server error")
        except FakeApiError as exc:
            return exc.response()
        return JSONResponse(result, status_code=status)

    return endpoint


def create_fake_app(state: FakeState) -> Starlette:
    """The Starlette app serving `state`; its lifespan runs the delivery thread."""

    def api(path: str, method: str, operation: Operation, status: int = 200) -> Route:
        return Route(path, _endpoint(state, operation, status=status), methods=[method])

    def change(path: str, method: str, operation: Operation, status: int = 200) -> Route:
        """A route that changes a subscription: the one `fault_after_change` strikes after it is done."""
        return Route(path, _endpoint(state, operation, status=status, change=True), methods=[method])

    def admin(path: str, method: str, operation: Operation) -> Route:
        return Route(path, _endpoint(state, operation, admin=True), methods=[method])

    s = state
    routes = [
        api("/", "GET", lambda c: "Hello World!"),
        api("/webhooks/topics", "GET", lambda c: s.topics()),
        api("/webhooks/ping", "POST", lambda c: s.ping(c.body)),
        api("/webhooks", "GET", lambda c: s.list_webhooks(c.caller, c.query)),
        change("/webhooks", "POST", lambda c: s.create_webhook(c.caller, c.body), 201),
        api("/webhooks/{id}", "GET", lambda c: s.get_webhook(c.caller, c.params["id"])),
        change("/webhooks/{id}", "PATCH", lambda c: s.update_webhook(c.caller, c.params["id"], c.body)),
        change("/webhooks/{id}", "DELETE", lambda c: s.remove_webhook(c.caller, c.params["id"])),
        api("/api-keys", "GET", lambda c: s.list_api_keys(c.caller, c.query)),
        api("/api-keys/", "GET", lambda c: s.list_api_keys(c.caller, c.query)),
        api("/api-keys", "POST", lambda c: s.create_api_key(c.caller, c.body), 201),
        api("/api-keys/auth/{key}", "POST", lambda c: s.authenticate_api_key(c.params["key"])),
        api("/api-keys/auth/{key}", "GET", lambda c: s.authenticate_api_key(c.params["key"])),
        api("/api-keys/{key}", "GET", lambda c: s.get_api_key(c.caller, c.params["key"])),
        api("/api-keys/{key}", "PATCH", lambda c: s.update_api_key(c.caller, c.params["key"], c.body)),
        api("/api-keys/{key}", "DELETE", lambda c: s.delete_api_key(c.caller, c.params["key"])),
        api("/api-keys/{key}/reactivate", "PATCH", lambda c: s.reactivate_api_key(c.caller, c.params["key"])),
        api("/api-keys/{key}/rotate", "POST", lambda c: s.rotate_api_key(c.caller, c.params["key"]), 201),
        api("/projects", "GET", lambda c: s.list_projects(c.caller, c.query)),
        api("/projects", "POST", lambda c: s.create_project(c.caller, c.body), 201),
        api("/projects/{id}", "GET", lambda c: s.get_project(c.caller, c.params["id"])),
        api("/projects/{id}", "PATCH", lambda c: s.update_project(c.caller, c.params["id"], c.body)),
        api("/projects/{id}", "DELETE", lambda c: s.delete_project(c.caller, c.params["id"])),
        api("/accounts", "GET", lambda c: s.list_accounts(c.caller)),
        api("/accounts/{id}", "GET", lambda c: s.get_account(c.caller, c.params["id"])),
        api("/access-keys", "GET", lambda c: s.list_access_keys(c.caller, c.query)),
        api("/access-keys", "POST", lambda c: s.create_access_key(c.caller, c.body), 201),
        api("/access-keys/{key}", "PATCH", lambda c: s.update_access_key(c.caller, c.params["key"], c.body)),
        api("/access-keys/{key}", "DELETE", lambda c: s.deactivate_access_key(c.caller, c.params["key"])),
        api(
            "/access-keys/{key}/reactivate", "PATCH", lambda c: s.set_access_key_active(c.caller, c.params["key"], True)
        ),
        # Test-only admin surface: no x-api-key, never faulted, shows the per-hook secrets.
        admin("/__fake__/webhooks", "GET", lambda c: s.admin_webhooks()),
        admin("/__fake__/webhooks/{id}/pause", "POST", lambda c: s.pause_webhook(c.params["id"])),
        admin("/__fake__/webhooks/{id}", "DELETE", lambda c: s.delete_webhook(c.params["id"])),
        admin("/__fake__/faults", "POST", lambda c: s.admin_fault(c.body)),
        admin("/__fake__/deliveries", "GET", lambda c: s.admin_deliveries()),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.close()

    return Starlette(routes=routes, lifespan=lifespan)
