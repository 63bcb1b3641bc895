"""Turns raw API keys and access-key tokens into fingerprints before an event leaves the receiver's memory.

A fingerprint is a keyed HMAC-SHA256 (the pepper stays local), so a stored fingerprint cannot be brute-forced
back into a key, yet the same key always gets the same fingerprint and an operator who holds a key can find
its history. The prefix (`live_`, `test_access_`, ...) and the last 4 characters are kept for humans.
"""

from __future__ import annotations

import functools
import hmac
import re
from dataclasses import dataclass
from typing import Any

# Field names whose string values are secrets wherever they appear (compared lower-cased, without - and _).
SECRET_FIELDS = frozenset(
    {"key", "apikey", "accesskey", "token", "accesstoken", "refreshtoken", "secret", "password", "signingsecret"}
)
# The Auth API's key shapes: live_/test_ API keys and live_access_/test_access_ access keys.
KEY_VALUE = re.compile(r"^(?:live|test)_[A-Za-z0-9_\-]{8,}$")
KEY_IN_TEXT = re.compile(r"\b(?:live|test)_[A-Za-z0-9_\-]{16,}")
PREFIX = re.compile(r"^(?:live|test)_(?:access_)?")
FINGERPRINT_CHARS = 32  # 128 bits of the HMAC: ample against collisions, short enough to read


@dataclass(frozen=True, slots=True)
class Redacted:
    fingerprint: str
    prefix: str
    last4: str

    def as_json(self) -> dict[str, Any]:
        return {"redacted": True, "fingerprint": self.fingerprint, "prefix": self.prefix, "last4": self.last4}


class Redactor:
    """Fingerprints and redacts with one pepper."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper

    def fingerprint(self, secret: str) -> str:
        # hmac.digest is OpenSSL's one-shot HMAC: the same value as hmac.new(...).hexdigest(), without the Python
        # wrapper object (this runs for every key in every delivery).
        return "fp_" + hmac.digest(self._pepper, secret.encode("utf-8"), "sha256").hex()[:FINGERPRINT_CHARS]

    def describe(self, secret: str) -> Redacted:
        match = PREFIX.match(secret)
        # Short custom keys keep no last4: four characters of an eight-character key is half of it.
        last4 = secret[-4:] if len(secret) >= 16 else ""
        return Redacted(self.fingerprint(secret), match.group(0) if match else "", last4)

    def redact(self, value: Any, field: str = "") -> Any:
        """A copy of a parsed JSON value with every secret replaced by `Redacted.as_json()`.

        Secrets are found by field name (`key`, `token`, ...) and by shape (`live_…` anywhere, also inside text).
        This runs on every delivery in the receiver, so strings take a fast path: a value without `_` can only be
        a secret by its field's name.
        """
        if isinstance(value, dict):
            return {k: self._value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v, field) for v in value]
        return self._value(value, field)

    def _value(self, value: Any, field: str) -> Any:
        if type(value) is str:
            if "_" not in value and not _is_secret_field(field):
                return value
            return self._string(value, field)
        if isinstance(value, dict | list):
            return self.redact(value, field)
        return value

    def _string(self, value: str, field: str) -> Any:
        if not value:
            return value
        if _is_secret_field(field) or KEY_VALUE.match(value):
            return self.describe(value).as_json()
        if "live_" in value or "test_" in value:
            return KEY_IN_TEXT.sub(lambda m: f"[redacted {self.fingerprint(m.group(0))}]", value)
        return value


@functools.lru_cache(maxsize=4096)
def _is_secret_field(name: str) -> bool:
    return name.lower().replace("_", "").replace("-", "") in SECRET_FIELDS


def fingerprint(pepper: bytes, secret: str) -> str:
    return Redactor(pepper).fingerprint(secret)


def describe(pepper: bytes, secret: str) -> Redacted:
    return Redactor(pepper).describe(secret)


def is_redacted(value: Any) -> bool:
    return isinstance(value, dict) and value.get("redacted") is True and "fingerprint" in value


def redact(value: Any, pepper: bytes) -> Any:
    """`Redactor(pepper).redact(value)`, for callers that redact once."""
    return Redactor(pepper).redact(value)
