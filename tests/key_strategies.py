"""Hypothesis strategies that plant The Auth API's keys (and custom keys) at random places of random payloads."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

# Payload text has no upper case and no digits, and custom keys always hold an upper-case letter G-Z: a custom key
# can only show up in an output if redaction let it through (never inside a lower-case hex fingerprint or a last4).
TEXT = st.text(st.characters(categories=("Ll", "Zs", "Po"), codec="utf-8"), max_size=12)
SHAPED_KEYS = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["live_", "test_", "live_access_", "test_access_"]),
    st.text(st.sampled_from(string.ascii_letters + string.digits), min_size=16, max_size=48),
)
SECRET_NAMES = st.sampled_from(["key", "apiKey", "api_key", "accessKey", "access-key", "token", "secret", "KEY"])
# Where a key sits inside text: alone, in a query string, URL-encoded, glued after letters, digits or `_`.
BEFORE = st.sampled_from(["", "?auth=", "auth%3D", "https://h.test/p?k=", "rotated_from_", "x", "9", "_", "a b "])
AFTER = st.sampled_from(["", "&next=1", "/", " end", ".", "%26"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)


def custom_keys(min_size: int = 5) -> st.SearchStrategy[str]:
    """Any-shape keys, as `key` may hold (`4321X`, `GQ-7.Z`): only their field name gives them away."""
    return st.builds(
        lambda letter, rest: letter + rest,
        st.sampled_from("GHIJKLMNOPQRSTUVWXYZ"),
        st.text(st.sampled_from("GHIJKLMNOPQRSTUVWXYZ0123456789-."), min_size=min_size - 1, max_size=24),
    )


@st.composite
def payloads(draw: st.DrawFn, custom: st.SearchStrategy[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """A random JSON object with generated keys planted in values, field names and text; returns it and the keys."""
    custom = custom_keys() if custom is None else custom
    planted: list[str] = []

    def keyed_text() -> str:
        key = draw(SHAPED_KEYS)
        planted.append(key)
        return draw(BEFORE) + draw(TEXT) * draw(st.integers(0, 1)) + key + draw(AFTER)

    def value(depth: int) -> Any:
        kinds = ["scalar", "keyed", "list", "object"] if depth < 5 else ["scalar", "keyed"]
        kind = draw(st.sampled_from(kinds))
        if kind == "scalar":
            return draw(SCALARS)
        if kind == "keyed":
            return keyed_text()
        if kind == "list":
            return [value(depth + 1) for _ in range(draw(st.integers(0, 3)))]
        return obj(depth + 1)

    def obj(depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for _ in range(draw(st.integers(0, 4))):
            slot = draw(st.sampled_from(["plain", "secret", "keyed name"]))
            if slot == "secret":
                key = draw(custom)
                planted.append(key)
                result[draw(SECRET_NAMES)] = draw(st.sampled_from([key, [key], {"value": key}]))
            elif slot == "keyed name":
                result[keyed_text()] = value(depth)
            else:
                result[draw(TEXT)] = value(depth)
        return result

    return obj(0), planted
