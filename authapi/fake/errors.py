"""The fake's error answers, in NestJS's HttpException shape, as The Auth API sends them."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.responses import JSONResponse

FAULT_MESSAGES = {
    401: "Unauthorized",
    403: "Invalid roles for this account",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
FORBIDDEN = "Invalid roles for this account"


class FakeApiError(Exception):
    """An answer in NestJS's HttpException shape: `{"statusCode", "message", "error"}`."""

    def __init__(self, status: int, message: str | list[str], *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"statusCode": self.status, "message": self.message, "error": HTTPStatus(self.status).phrase}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def not_found(what: str) -> FakeApiError:
    return FakeApiError(404, f"{what} not found")
