"""Proves a delivery came from The Auth API for this tenant: our token header and/or `theauthapi-signature`."""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Mapping

from config.settings import TenantSettings
from events.keyed_digest import KeyedDigest
from events.wire import SIGNATURE_HEADER, TOKEN_HEADER


class VerificationFailed(Exception):
    """The delivery is not proven genuine; the receiver answers 401 with `reason` (never the expected value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _any_equal(given: bytes, candidates: list[bytes]) -> bool:
    # Compare against every candidate without stopping early, so timing says nothing about which one matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(given, candidate)
    return matched


def signature_candidates(secret: bytes, body: bytes) -> list[bytes]:
    """What `theauthapi-signature` may hold for one secret: the secret itself (the documented static form) or an
    HMAC-SHA256 of the body keyed by it, hex or base64 (in case the vendor signs; the docs do not say)."""
    digest = _keyed(secret).digest(body)
    hex_digest = digest.hex().encode()
    return [secret, hex_digest, base64.b64encode(digest), b"sha256=" + hex_digest]


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes) -> KeyedDigest:
    # Each configured signing secret is keyed once, not per delivery (settings are built once; 64 is ample).
    return KeyedDigest(secret)


def verify_token(tenant: TenantSettings, headers: Mapping[str, str]) -> None:
    if tenant.token is None:
        return
    given = headers.get(TOKEN_HEADER)
    if given is None:
        raise VerificationFailed(f"missing {TOKEN_HEADER} header")
    if not _any_equal(given.encode(), [tenant.token.reveal().encode()]):
        raise VerificationFailed(f"{TOKEN_HEADER} does not match")


def verify_signature(tenant: TenantSettings, headers: Mapping[str, str], body: bytes) -> None:
    if not tenant.signing_secrets:
        return
    given = headers.get(SIGNATURE_HEADER)
    if given is None:
        raise VerificationFailed(f"missing {SIGNATURE_HEADER} header")
    candidates = [c for s in tenant.signing_secrets for c in signature_candidates(s.reveal().encode(), body)]
    if not _any_equal(given.strip().encode(), candidates):
        raise VerificationFailed(f"{SIGNATURE_HEADER} does not match")


def verify(tenant: TenantSettings, headers: Mapping[str, str], body: bytes) -> None:
    """Every check the tenant configures must pass (token, signature, or both)."""
    verify_token(tenant, headers)
    verify_signature(tenant, headers, body)
