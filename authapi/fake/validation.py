"""Validation of the fake's request DTOs and query parameters, worded like NestJS's class-validator."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from authapi.fake.errors import FakeApiError
from config.settings import DEFAULT_TOPICS

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

Check = Callable[[str, Any], str | None]


def check_string(name: str, value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"{name} must be a string"


def check_url(name: str, value: Any) -> str | None:
    ok = isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) > len("https://")
    return None if ok else f"{name} must be a URL address"


def check_object(name: str, value: Any) -> str | None:
    return None if isinstance(value, dict) else f"{name} must be an object"


def check_headers(name: str, value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return None if ok else f"{name} must be an object of strings"


def check_number(name: str, value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return None if ok else f"{name} must be a number conforming to the specified constraints"


def check_choice(*allowed: str) -> Check:
    def check(name: str, value: Any) -> str | None:
        return None if value in allowed else f"{name} must be one of the following values: {', '.join(allowed)}"

    return check


def check_topics(known: Sequence[str]) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return f"{name} must contain at least 1 elements"
        if not all(isinstance(v, str) for v in value):
            return f"each value in {name} must be a string"
        if unknown := [v for v in value if v not in known]:
            return f"each value in {name} must be one of the following values: {', '.join(known)} (got {unknown[0]})"
        return None

    return check


def validate(body: Mapping[str, Any], rules: Mapping[str, tuple[bool, Check]]) -> None:
    """400 with the list of every problem, the way a NestJS ValidationPipe answers."""
    problems: list[str] = []
    for name, (required, check) in rules.items():
        if body.get(name) is None:
            if required:
                problems.append(f"{name} should not be empty")
            continue
        if (problem := check(name, body[name])) is not None:
            problems.append(problem)
    if problems:
        raise FakeApiError(400, problems)


def query_int(raw: str | None, default: int) -> int:
    try:
        return max(0, int(raw)) if raw is not None else default
    except ValueError:
        raise FakeApiError(400, ["limit and offset must be integer numbers"]) from None


WEBHOOK_FIELDS: dict[str, Check] = {
    "name": check_string,
    "url": check_url,
    "topics": check_topics(DEFAULT_TOPICS),
    "httpMethod": check_choice(*HTTP_METHODS),
    "projectId": check_string,
    "accountId": check_string,
    "customHeaders": check_headers,
    "status": check_choice("live", "paused"),
}


# Request DTOs from the spec: field → (required, check).
Rules = dict[str, tuple[bool, Check]]
API_KEY_UPDATE: Rules = {
    "name": (True, check_string),
    **dict.fromkeys(("customAccountId", "customUserId", "expiry"), (False, check_string)),
    **dict.fromkeys(("customMetaData", "rateLimitConfigs"), (False, check_object)),
}
API_KEY_CREATE: Rules = {**API_KEY_UPDATE, "projectId": (False, check_string), "key": (False, check_string)}
ACCESS_KEY_CREATE: Rules = {
    "name": (True, check_string),
    **dict.fromkeys(("accountId", "projectId"), (False, check_string)),
    **dict.fromkeys(("rateLimit", "rateLimitTtl"), (False, check_number)),
}
