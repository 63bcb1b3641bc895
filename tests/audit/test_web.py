"""The audit web page: served with a strict CSP, a client of the audit API that writes data only as text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from harness import ServerThread, SettingsFactory

from keytrail.serving import create_app

API_TOKEN = "web-test-api-token-123"


@pytest.fixture
def server(make_settings: SettingsFactory, tmp_path: Path) -> object:
    settings = make_settings(api={"tokens": [API_TOKEN]})
    with ServerThread(create_app(settings)) as running:
        yield running


def test_page_script_and_styles_are_served_with_a_strict_policy(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/audit")
        script = client.get("/audit/audit.js")
        styles = client.get("/audit/audit.css")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form id="filters"' in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert styles.headers["content-type"].startswith("text/css")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # Values from webhook payloads are written with textContent only: no markup can be injected.
    assert "innerHTML" not in script.text
    assert "insertAdjacentHTML" not in script.text
    assert "<script>" not in page.text  # no inline script, as the policy requires
    # Searches go in a POST body: no filter value (a raw key typed into Key) in a URL, where access logs keep it.
    assert "fetch('/api/audit/search'" in script.text
    assert 'method: "POST"' in script.text
    assert "URLSearchParams" not in script.text
    assert "key=" not in script.text
    assert "/api/audit/records?" not in script.text


def test_the_page_holds_no_data_the_api_still_wants_a_token(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/api/audit/records").status_code == 401
        authorized = client.get("/api/audit/records", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert authorized.status_code == 200
    assert authorized.json()["records"] == []
