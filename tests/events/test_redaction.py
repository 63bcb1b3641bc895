"""Redaction: no generated key survives, wherever in a payload it sits — values, field names, URLs, after words."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from key_strategies import payloads

from events.redaction import MAX_DEPTH, Redactor, TooDeep, is_redacted

REDACTOR = Redactor(b"test-pepper")
KEY = "live_Q2hhbmdlTWVQbGVhc2VJdHNBU2VjcmV0S2V5MDE"


def redacted_text(value: Any) -> str:
    return orjson.dumps(REDACTOR.redact(value)).decode()


@pytest.mark.parametrize(
    "payload",
    [
        {"customMetaData": {KEY: 1}},
        {"data": {"callback": f"https://example.test/hook?x=1&auth%3D{KEY}"}},
        {"data": {"note": f"rotated_from_{KEY}"}},
        {"data": {"note": f"rotated from {KEY}x9"}},
        {"data": {"ids": [f"a{KEY}", f"9{KEY}", f"_{KEY}"]}},
        {"data": {f"old_{KEY}_name": {"nested": [KEY]}}},
        {"data": {"name": "live_shortkey"}},
    ],
)
def test_keys_in_field_names_and_glued_to_words_are_redacted(payload: dict[str, Any]) -> None:
    text = redacted_text(payload)
    assert KEY not in text
    assert "live_shortkey" not in text
    assert "[redacted fp_" in text or '"redacted":true' in text


def test_custom_keys_under_secret_fields_are_redacted_whatever_their_type() -> None:
    payload = {"key": 4321, "data": {"apiKey": "4321", "token": {"value": "s3cr3t-X"}, "accessKey": ["a1b2c3"]}}
    result = REDACTOR.redact(payload)
    assert is_redacted(result["key"])
    assert is_redacted(result["data"]["apiKey"])
    assert result["key"]["fingerprint"] == result["data"]["apiKey"]["fingerprint"]  # same key, same fingerprint
    assert is_redacted(result["data"]["token"]["value"])
    assert is_redacted(result["data"]["accessKey"][0])
    text = orjson.dumps(result).decode()
    assert "4321" not in text.replace(result["key"]["fingerprint"], "")
    assert "s3cr3t-X" not in text
    assert "a1b2c3" not in text


def test_nesting_past_the_limit_raises_too_deep_not_recursion_error() -> None:
    shallow: Any = 1
    for _ in range(MAX_DEPTH):
        shallow = [shallow]
    assert REDACTOR.redact(shallow) == shallow
    with pytest.raises(TooDeep):
        REDACTOR.redact([shallow])
    deep: Any = "x"
    for _ in range(100_000):
        deep = {"a": deep}
    with pytest.raises(TooDeep):
        REDACTOR.redact(deep)


# -- generated payloads ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(generated=payloads())
def test_no_generated_key_survives_redaction(generated: tuple[dict[str, Any], list[str]]) -> None:
    payload, planted = generated
    text = redacted_text(payload)
    assert [key for key in planted if key in text] == []
