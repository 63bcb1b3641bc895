"""The Auth API management client: how the bootstrap puts keytrail's subscription at the head of the event path.

Every failure is one `AuthApiError` whose text is a single line with the HTTP status and the API's own `message`.
Retries (network errors, 429, 5xx) live here and nowhere else on this path: the bootstrap is a CLI command and a
scheduled check, not an RQ job with its own retry policy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Self

import httpx
import structlog

from config.settings import Secret, Settings, TenantSettings
from events.version import VERSION
from sinks.http import parse_retry_after

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class AuthApiError(Exception):
    """The Auth API refused a request or could not be reached. `status` is None for network failures.

    `str()` is one line that never contains the access key, fit for a CLI error or a log field.
    `outcome_unknown` says the request may have been carried out all the same (a 5xx, or a connection lost after
    sending): a caller that changes things must read back rather than assume either way.
    """

    def __init__(self, text: str, *, status: int | None = None, message: str = "", sent: bool = True) -> None:
        super().__init__(text)
        self.status = status
        self.message = message
        self.sent = sent

    @property
    def outcome_unknown(self) -> bool:
        return (self.status is None and self.sent) or (self.status is not None and self.status >= 500)


def _user_agent() -> str:
    return f"keytrail/{VERSION}"


def error_message(response: httpx.Response) -> str:
    """The API's own words: NestJS `message` (a string or a list of validation messages), else `error`, else text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, Mapping):
        message = body.get("message") or body.get("error")
    elif isinstance(body, str):
        message = body
    if isinstance(message, list):
        message = "; ".join(str(item) for item in message)
    if not message:
        message = response.text[:200] if not isinstance(body, Mapping) and response.text.strip() else ""
    return " ".join(str(message).split())


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait: `Retry-After` (seconds or an HTTP date) or The Auth API's
    `retry-after-seconds` (a decimal, per its rate-limiting guide)."""
    for name in ("retry-after", "retry-after-seconds"):
        seconds = parse_retry_after(response.headers.get(name))
        if seconds is not None:
            return seconds
    return None


class AuthApiClient:
    """A small synchronous client: JSON in, JSON out, `x-api-key` auth, bounded retries with backoff.

    `transport` and `sleep` are injectable so tests can drive it without a network or a clock.
    """

    def __init__(
        self,
        base_url: str,
        access_key: Secret,
        *,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff_seconds: float = 0.5,
        max_wait_seconds: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._access_key = access_key
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.max_wait_seconds = max_wait_seconds
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"x-api-key": access_key.reveal(), "accept": "application/json", "user-agent": _user_agent()},
        )

    @classmethod
    def from_settings(cls, settings: Settings, tenant: TenantSettings) -> Self:
        if tenant.access_key is None:
            raise AuthApiError(
                f"tenant {tenant.name} has no access_key (set tenants.{tenant.name}.access_key)", sent=False
            )
        return cls(settings.authapi.base_url, tenant.access_key, timeout=settings.authapi.timeout_seconds)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotent: bool = True,
    ) -> Any:
        """Send one call and return its decoded JSON body (None when empty).

        Retries 429 always (the request was refused, not processed), connection failures always (nothing was sent),
        and 5xx / read timeouts only when `idempotent`, because a create that timed out may have happened.
        """
        where = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt < self.max_attempts and (unsent or idempotent):
                    self._wait(where, attempt, None, type(exc).__name__)
                    continue
                detail = self._redact(" ".join(str(exc).split())) or "no detail"
                raise AuthApiError(
                    f"The Auth API at {self.base_url} is unreachable ({where}, {_attempts(attempt)}): "
                    f"{type(exc).__name__}: {detail}",
                    sent=not unsent,
                ) from None
            retryable = response.status_code == 429 or (idempotent and response.status_code in RETRY_STATUSES)
            if retryable and attempt < self.max_attempts:
                self._wait(where, attempt, retry_after_seconds(response), str(response.status_code))
                continue
            if response.is_success:
                return _decode(response)
            raise self._error(where, response, attempt)

    def _wait(self, where: str, attempt: int, retry_after: float | None, reason: str) -> None:
        if retry_after is None:
            delay = self.backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random() / 2)  # noqa: S311 (jitter)
        else:
            delay = retry_after
        delay = min(delay, self.max_wait_seconds)
        log.info("authapi_request_retried", request=where, reason=reason, attempt=attempt, wait_seconds=round(delay, 3))
        self._sleep(delay)

    def _error(self, where: str, response: httpx.Response, attempt: int) -> AuthApiError:
        status = response.status_code
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        message = self._redact(error_message(response))
        text = f"The Auth API answered HTTP {status}{' ' + phrase if phrase else ''} to {where}"
        if message and message != phrase:
            text += f": {message}"
        if attempt > 1:
            text += f" ({_attempts(attempt)})"
        return AuthApiError(text, status=status, message=message)

    def _redact(self, text: str) -> str:
        key = self._access_key.reveal()
        return text.replace(key, "[access key]") if key else text

    # The calls the bootstrap makes; shapes the spec leaves UNKNOWN come back as plain JSON.

    def topics(self) -> Any:
        return self.request("GET", "/webhooks/topics")

    def list_webhooks(self, params: Mapping[str, str]) -> Any:
        return self.request("GET", "/webhooks", params=params)

    def get_webhook(self, webhook_id: str) -> Any:
        return self.request("GET", f"/webhooks/{webhook_id}")

    def create_webhook(self, body: Mapping[str, Any]) -> Any:
        return self.request("POST", "/webhooks", json=body, idempotent=False)

    def update_webhook(self, webhook_id: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", f"/webhooks/{webhook_id}", json=body)

    def delete_webhook(self, webhook_id: str) -> Any:
        return self.request("DELETE", f"/webhooks/{webhook_id}")

    def ping_webhook(self, body: Mapping[str, Any]) -> Any:
        # A repeated ping is harmless: the receiver records a marker, it does not enqueue anything.
        return self.request("POST", "/webhooks/ping", json=body)

    def list_projects(self, account_id: str) -> Any:
        return self.request("GET", "/projects", params={"accountId": account_id})


def _attempts(count: int) -> str:
    return f"after {count} attempts" if count > 1 else "1 attempt"


def _decode(response: httpx.Response) -> Any:
    if not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return response.text
