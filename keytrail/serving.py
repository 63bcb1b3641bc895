"""What `keytrail serve` and `keytrail up` run: the receiver, with the audit trail's HTTP API and page beside it."""

from __future__ import annotations

from audit import api, web
from config.settings import Settings
from ingest.app import Receiver
from ingest.app import create_app as create_receiver


def create_app(settings: Settings) -> Receiver:
    """The receiver (`ingest`) with the audit API and page (`audit`) mounted: one port for a small deployment.

    The receiver package does not know the audit trail; mounting both here keeps the layers pointing down."""
    return create_receiver(settings, routes=[*api.routes(settings), *web.routes()], on_shutdown=[api.close])
