"""Turns raw API keys and access-key tokens into fingerprints before an event leaves the receiver's memory.

A fingerprint is a keyed HMAC-SHA256 (the pepper stays local), so a stored fingerprint cannot be brute-forced
back into a key, yet the same key always gets the same fingerprint and an operator who holds a key can find
its history. The prefix (`live_`, `test_access_`, ...) and the last 4 characters are kept for humans.

The same pepper keys `body_digest`, the HMAC-SHA256 of a raw delivery body: stored as a record's `raw_sha256`
and used as the event key of a delivery without an event GUID. A plain SHA-256 of a body that held a short custom
key would let anyone with the record guess the key offline; keyed, it is stable only across receivers that share
the pepper (configure `audit.pepper` on each).

What counts as a key:
- any string, or number, under a secret field name (`key`, `token`, `accessKey`, ...): custom keys have no shape;
- a whole string shaped `live_…`/`test_…` (8+ characters after the prefix);
- inside any string or field name, `live_`/`test_` followed by 16+ of `[A-Za-z0-9_-]`, wherever it starts: after
  a letter, digit or `_` too (`auth%3Dlive_…`, `rotated_from_live_…`). A false positive costs a readable word;
  a false negative leaks a key.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from events.keyed_digest import KeyedDigest

# Field names whose values are secrets wherever they appear (compared lower-cased, without - and _).
SECRET_FIELDS = frozenset(
    {"key", "apikey", "accesskey", "token", "accesstoken", "refreshtoken", "secret", "password", "signingsecret"}
)
# The Auth API's key shapes: live_/test_ API keys and live_access_/test_access_ access keys.
KEY_PREFIXES = ("live_", "test_")
KEY_VALUE = re.compile(r"^(?:live|test)_[A-Za-z0-9_\-]{8,}$")
# No `\b`: a key glued to a word character (`%3Dlive_…`, `from_live_…`) is still a key.
KEY_IN_TEXT = re.compile(r"(?:live|test)_[A-Za-z0-9_\-]{16,}")
PREFIX = re.compile(r"^(?:live|test)_(?:access_)?")
FINGERPRINT_CHARS = 32  # 128 bits of the HMAC: ample against collisions, short enough to read
# The Auth API's payloads nest 3-4 levels; a bound keeps the walk (and orjson.dumps, limited to 254) from recursing
# out on hostile input.
MAX_DEPTH = 64


class TooDeep(ValueError):
    """The value nests more than MAX_DEPTH objects/arrays; the receiver answers 400."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")


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
        self._keyed = KeyedDigest(pepper)  # keyed once: this runs for every key and every body in every delivery

    def fingerprint(self, secret: str) -> str:
        return "fp_" + self._keyed.hexdigest(secret.encode("utf-8"))[:FINGERPRINT_CHARS]

    def body_digest(self, body: bytes) -> str:
        """HMAC-SHA256 of a raw body keyed by the pepper, hex: `raw_sha256` and a GUID-less event's key."""
        return self._keyed.hexdigest(body)

    def describe(self, secret: str) -> Redacted:
        match = PREFIX.match(secret)
        # Short custom keys keep no last4: four characters of an eight-character key is half of it.
        last4 = secret[-4:] if len(secret) >= 16 else ""
        return Redacted(self.fingerprint(secret), match.group(0) if match else "", last4)

    def redact(self, value: Any, field: str = "") -> Any:
        """A copy of a parsed JSON value with every secret replaced: values by `Redacted.as_json()`, keys inside
        text and field names by `[redacted fp_…]`. Raises TooDeep past MAX_DEPTH nested objects/arrays.

        This runs on every delivery in the receiver, so the common case costs no call and no regex: a string
        without `_` can only be a secret by its field's name, and only one starting `live_`/`test_` can be a key
        whole.
        """
        return self._value(value, bool(field) and _is_secret_field(field), 0)

    def _value(self, value: Any, secret: bool, depth: int) -> Any:
        """`value` redacted; `secret` when it sits under a secret field name (then everything in it is secret)."""
        if type(value) is str:
            return self._string(value, secret) if secret or "_" in value else value
        if isinstance(value, dict):
            return self._object(value, secret, depth)
        if isinstance(value, list):
            if depth >= MAX_DEPTH:
                raise TooDeep
            return [self._value(item, secret, depth + 1) for item in value]
        if secret and type(value) in (int, float):
            return self.describe(str(value)).as_json()  # a custom key sent as a JSON number
        return value

    def _object(self, value: dict[str, Any], secret: bool, depth: int) -> dict[str, Any]:
        if depth >= MAX_DEPTH:
            raise TooDeep
        depth += 1
        copy = {}
        for name, item in value.items():
            # Everything under a secret field is secret, whatever it is called inside (`key: {"value": …}`).
            inner = secret or _is_secret_field(name)
            shown = name if "_" not in name else self._text(name)
            if type(item) is not str:
                copy[shown] = self._value(item, inner, depth)
            elif inner or "_" in item:  # `_value`'s first case, inlined: most of a payload is such strings
                copy[shown] = self._string(item, inner)
            else:
                copy[shown] = item
        return copy

    def _string(self, value: str, secret: bool) -> Any:
        if not value:
            return value
        if secret or (value.startswith(KEY_PREFIXES) and KEY_VALUE.match(value)):
            return self.describe(value).as_json()
        return self._text(value)

    def _text(self, text: str) -> str:
        """`text` with each key shape in it replaced by `[redacted fp_…]` (also the whole of a short key)."""
        if "live_" not in text and "test_" not in text:
            return text
        if KEY_VALUE.match(text):  # a field name that is a whole key, however short
            return f"[redacted {self.fingerprint(text)}]"
        return KEY_IN_TEXT.sub(lambda m: f"[redacted {self.fingerprint(m.group(0))}]", text)


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
