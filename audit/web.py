"""The audit trail's web page: one static page that reads `/api/audit/…` with the operator's bearer token."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# The page runs only its own script and styles, talks only to this origin, and may not be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FILES = {
    "/audit": ("audit.html", "text/html; charset=utf-8"),
    "/audit/audit.js": ("audit.js", "text/javascript; charset=utf-8"),
    "/audit/audit.css": ("audit.css", "text/css; charset=utf-8"),
}


def routes() -> list[BaseRoute]:
    """The page's routes. The files are read once here; the data they show needs the API's token."""
    folder = resources.files("audit") / "page"
    served: list[BaseRoute] = []
    for path, (name, media_type) in FILES.items():
        content = (folder / name).read_bytes()

        async def endpoint(request: Request, content: bytes = content, media_type: str = media_type) -> Response:
            return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

        served.append(Route(path, endpoint, methods=["GET"]))
    return served
