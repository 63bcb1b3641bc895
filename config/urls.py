"""URLs that may carry credentials: masked for messages and logs, and checked at load so no client prints them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Query parameters that carry credentials in the URLs keytrail meets (libpq's `password`, `sslpassword`, tokens).
_SECRET_PARAM = re.compile(r"(pass|secret|token|key|auth|sig)", re.IGNORECASE)
# A URL inside free text, as libraries log them. httpx percent-encodes space, '"', '<' and '>' (and only those
# among printable ASCII, in a query), so they end a URL; a "'" does not: it is legal in a path.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"<>]+")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
MASK = "***"


def display_url(url: str) -> str:
    """A URL for messages: the password (everything up to the last '@') and credential query values are masked.

    `redis://:pw@host/0` → `redis://:***@host/0`; `postgresql://u:pw@db/x?password=pw` → `…u:***@db/x?password=***`.
    The last '@' rather than the first: a password with an unencoded '@' or '/' must not leak its tail."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"{MASK}@{url.rpartition('@')[2]}" if "@" in url else url  # not a URL; still hide what may be one
    if rest.startswith("/"):
        return url  # no authority (sqlite:///path, unix:///socket): nothing secret to hide
    at = rest.rfind("@")
    shown = f"{scheme}://"
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        # A user name holding '/', '?', '#' or '@' means the split is not what it seems: hide it too.
        user = MASK if any(c in user for c in "/?#@") else user
        shown += f"{user}:{MASK}@" if colon else f"{user}@"
        rest = rest[at + 1 :]
    base, question, query = rest.partition("?")
    if question:
        query = "&".join(_masked_param(param) for param in query.split("&"))
    return shown + base + question + query


def _masked_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    return f"{name}={MASK}" if eq and _SECRET_PARAM.search(name) else param


def mask_urls(text: str) -> str:
    """Text with every URL cut to `scheme://host[:port]`: credentials, path and query become `***`.

    For library log lines (httpx prints each request's URL): a path can itself be the credential (a Slack webhook,
    a CRM's inbound URL with a token), and a log line cannot tell which, so no path is kept."""
    return _URL_IN_TEXT.sub(_masked_match, text) if "://" in text else text


def _masked_match(match: re.Match[str]) -> str:
    scheme, _, rest = match.group(0).partition("://")
    authority = re.match(r"[^/?#]*", rest)
    assert authority is not None  # `*` always matches
    tail = rest[authority.end() :]
    if "@" in tail:
        # Either a password with an unencoded '/' (its tail would pass for the host) or an '@' in the path:
        # no part of it can be shown safely.
        return f"{scheme}://{MASK}"
    _, at, host = authority.group(0).rpartition("@")
    return f"{scheme}://{MASK + at if at else ''}{host}" + (f"/{MASK}" if tail.strip("/") else tail)


def url_problems(where: str, url: str, schemes: tuple[str, ...]) -> list[str]:
    """What would make a client fail on `url` with a message that quotes it (a port that is not a number, a
    password whose '/', '?', '#' or '@' is not percent-encoded); each problem names the URL masked."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        return [f"{where}: {display_url(url)!r} must start with one of {', '.join(s + '://' for s in schemes)}"]
    if rest.startswith("/"):
        return []
    shown = display_url(url)
    authority = re.match(r"[^/?#]*", rest)
    assert authority is not None
    if "@" in rest[authority.end() :]:
        return [
            f"{where}: {shown}: an '@' after the host part; percent-encode '/', '?', '#' and '@' in the password "
            "(%2F, %3F, %23, %40)"
        ]
    if scheme.lower() == "sqlite":
        return [f"{where}: {shown}: write sqlite:///relative/path.db or sqlite:////absolute/path.db"]
    problems: list[str] = []
    if scheme.lower().startswith("postgres"):
        # libpq splits user info at the first '@' and quotes a bad percent escape back, password and all.
        if authority.group(0).count("@") > 1:
            problems.append(f"{where}: {shown}: percent-encode '@' in the password as %40")
        if _BAD_PERCENT.search(url):
            problems.append(f"{where}: {shown}: a '%' that is not a percent escape (write a literal '%' as %25)")
    try:
        port = urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        problems.append(f"{where}: {shown}: malformed host or port (a port is a number from 1 to 65535)")
    return problems
