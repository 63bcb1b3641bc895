"""The receiver's wire contract: where The Auth API delivers, the headers that prove a delivery, and the ping.

The receiver reads it (ingest/), subscriptions and pings write it (authapi/), and `simulate` and the fake The Auth
API speak it; it is spelled out here only.
"""

from __future__ import annotations

import re

HOOK_PREFIX = "/hooks/theauthapi/"  # then the tenant's name: one URL per tenant, POST only

# Header names as a receiver sees them (HTTP header names are case-insensitive; ASGI hands them over lowercased).
TOKEN_HEADER = "x-keytrail-token"  # noqa: S105 - a header name, not a secret
SIGNATURE_HEADER = "theauthapi-signature"
# The token header as keytrail spells it where it sets it: a subscription's `customHeaders`, a ping's headers and
# operators' messages. Subscriptions are compared field by field, so respelling it would make `keytrail subscribe`
# replace every existing subscription.
SUBSCRIPTION_TOKEN_HEADER = "X-Keytrail-Token"  # noqa: S105 - a header name, not a secret

# A bootstrap ping is a JSON object with this field holding a marker; it is recorded, never an audit event.
PING_FIELD = "keytrail_ping"
PING_MARKER = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def hook_path(tenant: str) -> str:
    return f"{HOOK_PREFIX}{tenant}"


def hook_url(public_url: str, tenant: str) -> str:
    """The URL The Auth API delivers a tenant's events to, under the receiver's public (or local) base URL."""
    return public_url.rstrip("/") + hook_path(tenant)
