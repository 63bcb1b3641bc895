"""How the webhook sink proves who it is to a CRM: no credentials, a bearer token, basic auth, or OAuth 2.0 client
credentials (RFC 6749 §4.4) with the access token cached until it expires and fetched again on a 401.

Every mode gives `authorization(client)`: the `Authorization` header value (or None), fetched or cached. A token
endpoint that is down, slow, rate-limiting or failing (network, 408, 429, 5xx) is SinkUnavailable: the records are
kept and retried. One that refuses the client (400 invalid_client, 401, other 4xx) or answers without a usable token
is SinkUnavailable with an alert: the credentials need fixing, and the records are held until they are, as with a
revoked HEC token. No reason ever holds the client secret, a token or the token URL.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

import httpx

from config.settings import Secret
from sinks import http
from sinks.errors import SinkUnavailable
from sinks.options import Options

AuthMode = Literal["none", "bearer", "basic", "oauth2"]
AUTH_MODES: tuple[AuthMode, ...] = ("none", "bearer", "basic", "oauth2")
ClientAuth = Literal["basic", "body"]
CLIENT_AUTH: tuple[ClientAuth, ...] = ("basic", "body")
# Refresh this long before the token endpoint's `expires_in` runs out (at most half the lifetime), so a request is
# not sent with a token that expires in flight.
EXPIRY_MARGIN = 30.0


class Credentials(Protocol):
    """What the sink asks of an auth mode. `refreshable`: a 401 may be cured by `invalidate()` and one more try."""

    refreshable: bool

    def authorization(self, client: httpx.Client) -> str | None: ...

    def invalidate(self) -> None: ...


def basic_value(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class NoCredentials:
    refreshable = False

    def authorization(self, client: httpx.Client) -> str | None:
        return None

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NoCredentials()"


class StaticCredentials:
    """A bearer token or a username/password pair: the same header on every request."""

    refreshable = False

    def __init__(self, scheme: Literal["bearer", "basic"], value: Secret) -> None:
        self.scheme = scheme
        self._value = value  # the whole header value, kept as a Secret

    @classmethod
    def bearer(cls, token: Secret) -> StaticCredentials:
        return cls("bearer", Secret("Bearer " + token.reveal()))

    @classmethod
    def basic(cls, username: str, password: Secret) -> StaticCredentials:
        return cls("basic", Secret(basic_value(username, password.reveal())))

    def authorization(self, client: httpx.Client) -> str | None:
        return self._value.reveal()

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"StaticCredentials(scheme={self.scheme!r}, value={self._value!r})"


class ClientCredentials:
    """OAuth 2.0 client credentials: POST `grant_type=client_credentials` (and `scope`) to the token endpoint, the
    client authenticated with HTTP Basic (`client_auth = "basic"`, RFC 6749 §2.3.1's preferred way) or in the form
    body (`"body"`). The token is cached until `expires_in` minus a margin; without `expires_in` (Salesforce sends
    none) until the endpoint answers 401."""

    refreshable = True

    def __init__(
        self,
        token_url: Secret,
        client_id: str,
        client_secret: Secret,
        *,
        scope: str | None = None,
        client_auth: ClientAuth = "basic",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.client_auth = client_auth
        self._clock = clock
        self._token: Secret | None = None
        self._expires_at = float("inf")
        self._lock = threading.Lock()

    def authorization(self, client: httpx.Client) -> str | None:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, self._expires_at = self._fetch(client)
            return "Bearer " + self._token.reveal()

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self, client: httpx.Client) -> tuple[Secret, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"accept": "application/json"}
        if self.client_auth == "basic":
            headers["authorization"] = basic_value(self.client_id, self._client_secret.reveal())
        else:
            form |= {"client_id": self.client_id, "client_secret": self._client_secret.reveal()}
        requested_at = self._clock()
        try:
            response = client.post(self._token_url.reveal(), data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"token endpoint: {http.transport_error(exc).reason}") from None
        answer = http.read_answer(response, label="token endpoint HTTP", now=requested_at)
        if answer.retryable:
            raise SinkUnavailable(answer.detail, retry_after=answer.retry_after)
        if not 200 <= answer.status < 300:
            hint = "fix the token URL" if answer.status < 400 else "check client_id, client_secret and scope"
            raise SinkUnavailable(f"{answer.detail} ({hint}; records are held)", alert=True)
        return self._read_token(response, requested_at)

    def _read_token(self, response: httpx.Response, requested_at: float) -> tuple[Secret, float]:
        try:
            data = response.json()
        except ValueError:
            data = None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise SinkUnavailable("token endpoint answered without an access_token", alert=True)
        assert isinstance(data, dict)
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise SinkUnavailable(f"token endpoint issued a {str(token_type)[:20]!r} token, not Bearer", alert=True)
        lifetime = data.get("expires_in")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            return Secret(token), float("inf")
        return Secret(token), requested_at + lifetime - min(EXPIRY_MARGIN, lifetime / 2)

    def __repr__(self) -> str:
        return (
            f"ClientCredentials(token_url={self._token_url!r}, client_id={self.client_id!r}, "
            f"client_secret={self._client_secret!r}, scope={self.scope!r}, client_auth={self.client_auth!r})"
        )


def credentials_from_options(opts: Options, clock: Callable[[], float] = time.time) -> Credentials:
    """Read `auth` and the options its mode needs (each missing or misplaced one is a problem in `opts`)."""
    where = f"sinks.{opts.settings.name}"
    mode = opts.string("auth", "none", choices=AUTH_MODES)
    given = {key for key in MODE_OPTIONS_ALL if opts.settings.options.get(key) is not None}
    for key in sorted(given - set(MODE_OPTIONS.get(mode, ()))):
        opts.secret(key, required=False)  # read, so it is not reported a second time as unknown
        if mode in AUTH_MODES:
            opts.problems.append(f"{where}.{key}: only used with auth = {OPTION_MODE[key]!r} (auth is {mode!r})")
    if mode == "bearer":
        token = opts.secret("token")
        return StaticCredentials.bearer(token) if token is not None else NoCredentials()
    if mode == "basic":
        username = opts.string("username")
        password = opts.secret("password")
        if ":" in username:
            opts.problems.append(f"{where}.username: must not contain ':' (HTTP Basic)")
        return StaticCredentials.basic(username, password) if password is not None else NoCredentials()
    if mode == "oauth2":
        token_url = opts.secret("token_url")
        client_id = opts.string("client_id")
        client_secret = opts.secret("client_secret")
        scope = opts.optional_string("scope")
        client_auth = opts.string("client_auth", "basic", choices=CLIENT_AUTH)
        if token_url is not None and not token_url.reveal().startswith(("https://", "http://")):
            opts.problems.append(f"{where}.token_url: must start with https:// (or http://)")
        if token_url is None or client_secret is None:
            return NoCredentials()
        return ClientCredentials(
            token_url,
            client_id,
            client_secret,
            scope=scope,
            client_auth="body" if client_auth == "body" else "basic",
            clock=clock,
        )
    return NoCredentials()


MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "bearer": ("token",),
    "basic": ("username", "password"),
    "oauth2": ("token_url", "client_id", "client_secret", "scope", "client_auth"),
}
OPTION_MODE = {key: mode for mode, keys in MODE_OPTIONS.items() for key in keys}
MODE_OPTIONS_ALL = tuple(OPTION_MODE)
