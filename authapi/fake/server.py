"""Running the fake: a uvicorn server on a loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from authapi.fake.app import create_fake_app
from authapi.fake.state import FakeState


class LoopbackServer:
    """Serves an ASGI app with uvicorn on a background thread; `with LoopbackServer(app) as server: server.url`.

    Port 0 picks a free port. Start-up and shut-down waits are bounded.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 10.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", ws="none", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.start_timeout)
        if self._socket is not None:
            self._socket.close()


class FakeAuthApi(LoopbackServer):
    """The fake on a free loopback port: `with FakeAuthApi() as fake: fake.state.seed(...); fake.url`."""

    def __init__(self, state: FakeState | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or FakeState()
        super().__init__(create_fake_app(self.state), host=host, port=port)
