"""When a bootstrap ping never arrives, the command names the likely cause by probing the receiver directly."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from harness import REDIS_URL, TOKEN, ServerThread, SettingsFactory, free_port
from redis import Redis

from authapi.ping import diagnose_ping
from config.settings import Secret, TenantSettings
from ingest.app import create_app


def tenant(url: str, token: str = TOKEN) -> TenantSettings:
    return TenantSettings(name="acme", token=Secret(token), access_key=Secret("live_access_x"), public_url=url)


def test_pings_reach_the_receiver_from_here_so_the_public_url_is_unreachable_from_outside(
    make_settings: SettingsFactory, redis: Redis
) -> None:
    with ServerThread(create_app(make_settings())) as server:
        cause = diagnose_ping(redis, tenant(server.url), 1.0)
    assert "public_url unreachable from The Auth API" in cause


def test_a_wrong_token_is_named(make_settings: SettingsFactory, redis: Redis) -> None:
    with ServerThread(create_app(make_settings())) as server:
        cause = diagnose_ping(redis, tenant(server.url, token="not-the-receivers"), 1.0)
    assert "token mismatch" in cause


def another_database(url: str) -> str:
    """The neighbour database of the test Redis, whatever KT_TEST_REDIS_URL chose."""
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{number ^ 1}"))


def test_a_receiver_on_another_redis_is_named(make_settings: SettingsFactory, redis: Redis) -> None:
    other_url = another_database(REDIS_URL)
    with ServerThread(create_app(make_settings(redis={"url": other_url}))) as server:
        cause = diagnose_ping(redis, tenant(server.url), 1.0)
    # That database may be another suite's: remove only the ping keys this test made there (they expire anyway).
    with Redis.from_url(other_url) as other:
        for key in other.scan_iter("keytrail:ping:acme:*"):
            other.delete(key)
    assert "did not record the ping in this Redis" in cause


def test_a_receiver_that_is_down_is_named(redis: Redis) -> None:
    cause = diagnose_ping(redis, tenant(f"http://127.0.0.1:{free_port()}"), 1.0)
    assert "receiver down?" in cause
