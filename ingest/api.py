"""The audit-trail HTTP API mounted on the receiver (`/api/...`); routes are added by the audit query work."""

from __future__ import annotations

from starlette.routing import BaseRoute

from config.settings import Settings


def routes(settings: Settings) -> list[BaseRoute]:
    """The API's routes; none until the audit query API is built."""
    return []
