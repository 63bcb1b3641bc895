"""What users type as filters (CLI flags, API query parameters) → a RecordQuery or one QueryError line, never a
crash: the examples that broke it, then generated text, numbers, times and cursors, run on a real SQLite store."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stores_fixtures import make_record, route_all

from audit.queries import (
    FILTERS,
    MAX_SEQ,
    ORDERS,
    QueryError,
    build_query,
    decode_cursor,
    encode_cursor,
    parse_count,
    parse_entity_type,
    parse_text,
    parse_time,
)
from audit.stores import AuditStore, open_store

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def cursor_of(state: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def one_line(error: QueryError) -> str:
    message = str(error)
    assert message
    assert message.isprintable(), message  # no newline, NUL or terminal escape: it is printed as one line
    assert len(message) < 300
    return message


# ---- the inputs that used to crash --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("999999w", "reaches back more than 36525 days"),
        ("5218w", "reaches back more than"),
        ("0001-01-01T00:00:00+01:00", "time out of range"),
        ("9999-12-31T23:59:59-01:00", "time out of range"),
        ("\uff12\uff10\uff12\uff16-11-01", "not a time"),  # fullwidth digits
        ("\u0661\u0662h", "not a time"),  # Arabic-Indic digits: `\d` would take them
        ("2026-11-01\x00", "not a time"),
        ("x" * 10_000, "not a time"),
    ],
)
def test_times_out_of_range_or_shape_are_query_errors(value: str, reason: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_time(value, now=NOW)
    assert reason in one_line(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("0001-01-01T00:00:00-01:00", "0001-01-01T01:00:00.000Z"),
        ("9999-12-31T23:59:59+01:00", "9999-12-31T22:59:59.000Z"),
        ("36525d", "1926-11-28T10:00:00.000Z"),
        (" 24h ", "2026-11-27T10:00:00.000Z"),
    ],
)
def test_times_at_the_edges_of_the_range_are_accepted(value: str, expected: str) -> None:
    assert parse_time(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("²", "whole number"),  # "²".isdigit() is True, int("²") fails
        ("\u0661\u0660", "whole number"),  # int() would take it
        ("1_0", "whole number"),
        ("+5", "whole number"),
        ("", "whole number"),
        ("5" * 5000, "between 1 and 1000"),  # int() of it raises ValueError (digit limit)
        ("1001", "between 1 and 1000"),
        ("0", "between 1 and 1000"),
    ],
)
def test_counts_are_ascii_digits_within_bounds(value: str, reason: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_count("limit", value, maximum=1000)
    assert reason in one_line(caught.value)
    assert parse_count("limit", " 0007 ", maximum=1000) == 7


@pytest.mark.parametrize(
    "state",
    [
        {"s": 2**63, "o": "newest"},  # past SQLite INTEGER / PostgreSQL BIGINT
        {"s": 10**4000, "o": "newest"},
        {"s": -1, "o": "newest"},
        {"s": True, "o": "newest"},
        {"s": 1.5, "o": "newest"},
        {"s": 1, "o": "event_time", "t": "2026\x00"},
        {"s": 1, "o": "event_time", "t": "\ud800"},
        {"s": 1, "o": "event_time", "t": "9" * 100},
        {"s": 1, "o": "event_time", "t": 5},
        [1, 2],
        "s",
        None,
    ],
)
def test_forged_cursors_are_query_errors(state: Any) -> None:
    order = state.get("o", "newest") if isinstance(state, dict) else "newest"
    with pytest.raises(QueryError) as caught:
        decode_cursor(cursor_of(state), order)
    assert one_line(caught.value) == "cursor is not one this server issued"


@pytest.mark.parametrize("token", ["", "  ", "W" * 600, "a===", "%%%", "eyJz\x00", "[" * 2000])
def test_malformed_cursors_are_query_errors(token: str) -> None:
    with pytest.raises(QueryError) as caught:
        decode_cursor(token, "newest")
    assert "cursor" in one_line(caught.value)


def test_a_deeply_nested_cursor_is_a_query_error() -> None:
    with pytest.raises(QueryError):
        decode_cursor(base64.urlsafe_b64encode(b"[" * 380).decode(), "newest")


@pytest.mark.parametrize("value", ["a\x00b", "tab\there", "\ud800", "x" * 1025, " ", "\x85"])
def test_free_text_refuses_control_characters_surrogates_and_huge_values(value: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_text("tenant", value)
    assert one_line(caught.value).startswith("tenant ")


# ---- generated input -----------------------------------------------------------------------------------------

ODD_TIMES = st.one_of(
    st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:00{}".format,
        st.integers(0, 10000),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 25),
        st.integers(0, 60),
        st.sampled_from(["", "Z", "z", "+01:00", "-01:00", "+23:59", "-23:59", "+24:00", "+00:00:01"]),
    ),
    st.builds("{}{}".format, st.integers(0, 10**8), st.sampled_from([*"smhdwyM", "", " ", "hh"])),
    st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
)
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(1, 6000).map(lambda digits: "9" * digits),
    st.sampled_from(["²", "\u0661", "½", "1e3", "0x10", "1_000", "\uff11\uff10", "-0", "+1", "1.0", "NaN", "inf"]),
)
CURSORS = st.one_of(
    st.builds(
        lambda seq, order, time: cursor_of({"s": seq, "o": order, **({"t": time} if time is not None else {})}),
        st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.none()),
        st.sampled_from([*ORDERS, "sideways"]),
        st.one_of(st.none(), st.text(max_size=80), ODD_TIMES),
    ),
    st.binary(max_size=200).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
)
TEXT = st.one_of(st.text(max_size=60), st.text(max_size=2000), st.characters().map(str))
ANYTHING = st.one_of(TEXT, ODD_TIMES, NUMBERS, CURSORS)


@given(value=ANYTHING)
def test_each_parser_returns_or_raises_one_query_error(value: str) -> None:
    for parse in (
        lambda: parse_time(value, now=NOW),
        lambda: parse_count("limit", value, maximum=1000),
        lambda: parse_entity_type(value),
        lambda: parse_text("tenant", value),
        lambda: decode_cursor(value, "newest"),
        lambda: decode_cursor(value, "event_time"),
    ):
        try:
            parse()
        except QueryError as exc:
            one_line(exc)


@given(seq=st.integers(0, MAX_SEQ), order=st.sampled_from(ORDERS))
def test_every_cursor_this_server_issues_decodes_to_itself(seq: int, order: str) -> None:
    time = "2026-11-01T00:00:00.000Z" if order == "event_time" else None
    assert decode_cursor(encode_cursor(seq, order, time), order) == (seq, time)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditStore]:
    """A real SQLite store with a few records: every accepted query must run on it."""
    path = Path(tmp_path_factory.mktemp("parsing")) / "audit.db"
    opened = open_store(f"sqlite:///{path}")
    opened.append([make_record(n) for n in range(5)], route_all)
    yield opened
    opened.close()


@given(
    filters=st.dictionaries(st.sampled_from(FILTERS), ANYTHING, max_size=4),
    limit=st.integers(-5, 2000),
    order=st.sampled_from([*ORDERS, "", "NEWEST"]),
    cursor=st.one_of(st.none(), CURSORS, TEXT),
)
def test_any_typed_query_builds_and_runs_or_is_one_query_error(
    store: AuditStore, filters: dict[str, str], limit: int, order: str, cursor: str | None
) -> None:
    try:
        query = build_query(
            filters, fingerprint_of=lambda raw: "fp_" + "0" * 32, limit=limit, order=order, cursor=cursor
        )
    except QueryError as exc:
        one_line(exc)
        return
    store.search(query)
    store.count(query)
