"""KeyedDigest is HMAC-SHA256: the same bytes as the standard library's, for every key length and message."""

from __future__ import annotations

import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from events.keyed_digest import KeyedDigest

BLOCK_BYTES = 64  # SHA-256: keys shorter than, equal to and longer than a block take different paths in HMAC


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=3 * BLOCK_BYTES), message=st.binary(max_size=2_000))
def test_keyed_digest_equals_hmac_sha256(key: bytes, message: bytes) -> None:
    keyed = KeyedDigest(key)
    assert keyed.digest(message) == hmac.digest(key, message, "sha256")
    assert keyed.hexdigest(message) == hmac.new(key, message, "sha256").hexdigest()


def test_keys_at_the_block_boundary() -> None:
    for length in (0, BLOCK_BYTES - 1, BLOCK_BYTES, BLOCK_BYTES + 1):
        key = bytes(range(length))
        assert KeyedDigest(key).digest(b"body") == hmac.digest(key, b"body", "sha256")


def test_one_keyed_digest_serves_many_messages_independently() -> None:
    keyed = KeyedDigest(b"pepper")
    first = keyed.digest(b"a")
    keyed.digest(b"b" * 10_000)
    assert keyed.digest(b"a") == first


def test_repr_hides_the_key() -> None:
    assert "pepper" not in repr(KeyedDigest(b"pepper"))
