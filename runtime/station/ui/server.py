"""The operator page's server: uvicorn on its own thread and event loop inside the station's process.

The socket is bound and listening here, before the first frame, so a port in use or an address
this machine lacks stops the station at start with one clear line, and a browser that connects
at once waits for uvicorn instead of being refused. uvicorn leaves signal handling to the main
thread (the station's stop handler); `close` ends the live streams, then the server, within a
few seconds.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from ...errors import ZsadEdgeError
from ..sinks import lower_priority
from ..station import Station
from .live import LiveView

UI_EXTRA = "pip install 'zsad-edge[ui]'"
STOP_S = 5.0
BACKLOG = 128
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MIN_TOKEN_CHARS = 16
log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT` (an IPv6 host in brackets: [::1]:8080); the host defaults to 127.0.0.1."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ZsadEdgeError(f"--ui {text!r}: expected PORT or HOST:PORT, e.g. 8080 or 0.0.0.0:8080")
    return host, int(port)


def check_binding(host: str, token: str | None) -> None:
    """On a loopback address only people logged into the box reach the page, so it needs no token
    unless one is given. Any other address needs one, and not a guessable one."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ZsadEdgeError(
            f"--ui-token is too short ({len(token)} characters): use at least {MIN_TOKEN_CHARS}, "
            "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
        )
    if host not in LOOPBACK and token is None:
        raise ZsadEdgeError(
            f"--ui {host}: a page on an address other than localhost needs a token: add "
            "--ui-token '${file:/path/to/token}' (or ${ENV_VARIABLE}), or serve it on 127.0.0.1"
        )


class UiServer:
    """Serves the page for `station` at http://HOST:PORT/ until `close()`."""

    def __init__(self, station: Station, view: LiveView, out: Path, host: str, port: int, token: str | None) -> None:
        try:
            import uvicorn

            from .app import PageState, build_app
        except ImportError:
            raise ZsadEdgeError(f"--ui needs Starlette and uvicorn: {UI_EXTRA}") from None
        check_binding(host, token)
        for folder in ("frames", "video"):  # the saved evidence the page links to
            (out / folder).mkdir(parents=True, exist_ok=True)
        self._closing = threading.Event()
        app = build_app(PageState(station, view, out), token, self._closing)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(BACKLOG)  # connections wait in the queue until uvicorn's loop takes them
        except OSError as exc:
            self._socket.close()
            raise ZsadEdgeError(f"--ui {host}:{port}: cannot serve the page there: {exc.strerror}") from None
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="ui-server", daemon=True)
        self._thread.start()
        log.warning("operator page: %s", self.url)

    def _serve(self) -> None:
        lower_priority()  # like the sinks: the page takes the CPU the model leaves (its worker threads inherit it)
        self._server.run(sockets=[self._socket])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self._closing.set()
        self._server.should_exit = True
        self._thread.join(STOP_S)
        self._socket.close()
