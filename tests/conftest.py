"""Shared fixtures: a real Redis database per test, settings built from dicts, logging reset between tests."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import structlog
from harness import REDIS_URL, SIGNING_SECRET, TOKEN, SettingsFactory
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from redis import Redis
from redis.exceptions import RedisError

from config import Settings, settings_from_mapping

# Generated tests talk to real servers, so an example's time says nothing about the code: no deadline. Each test
# bounds its own `max_examples`; CI prints the seed and blob of any failure so it can be replayed.
hypothesis_settings.register_profile(
    "keytrail", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True, max_examples=50
)
hypothesis_settings.load_profile("keytrail")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Commands configure logging onto the stream current at the time (pytest's capture); undo it after."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.WARNING)


@pytest.fixture
def redis() -> Iterator[Redis]:
    connection = Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except RedisError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and does not answer at {REDIS_URL}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for one test: tenant `acme` (token + signing secret), SQLite and a file sink under tmp_path."""

    def make(**overrides: Any) -> Settings:
        data: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "redis": {"url": REDIS_URL, "autostart": False},
            "audit": {"url": f"sqlite:///{tmp_path / 'data' / 'audit.db'}"},
            "worker": {"backoff_base_seconds": 1.0, "backoff_ceiling_seconds": 2.0, "recovery_interval_seconds": 0.5},
            "tenants": {"acme": {"token": TOKEN, "signing_secrets": [SIGNING_SECRET]}},
            "sinks": [{"name": "archive", "type": "file", "path": str(tmp_path / "out" / "audit.jsonl")}],
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return settings_from_mapping(data, {})

    return make


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Servers a test starts (fakes, loopback peers), all stopped when it ends."""
    with ExitStack() as opened:
        yield opened
