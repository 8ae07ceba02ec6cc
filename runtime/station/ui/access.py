"""Who may see and steer the operator page (server.py refuses to serve it off localhost without a
token). A request carries the token as
`Authorization: Bearer TOKEN`, or as the cookie the login page sets (an HMAC of the token, so the
token itself is not stored in the browser). With a token, everything but the login page and the
page's static files needs it, pausing and resuming included. Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Awaitable, Callable, MutableMapping

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse

COOKIE = "zsad_edge_ui"
OPEN_PATHS = ("/login", "/static/")

Scope = MutableMapping
Receive = Callable[[], Awaitable[MutableMapping]]
Send = Callable[[MutableMapping], Awaitable[None]]


def session_value(token: str) -> str:
    """What the login cookie holds: derived from the token, not the token itself."""
    return hmac.new(token.encode(), b"zsad-edge operator page", hashlib.sha256).hexdigest()


class TokenGate:
    """ASGI middleware: with a token set, requests without it get 401 (the API, files) or are sent
    to the login page (pages)."""

    def __init__(self, app: Callable, token: str | None) -> None:
        self.app, self.token = app, token
        self.session = session_value(token) if token else None

    def allows(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())

    def accepts(self, token: str) -> bool:
        """A token typed into the login page."""
        return self.token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.allows(request):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(("/api/", "/files/")):
            response = JSONResponse({"error": "this station's page needs its token: log in at /login"}, 401)
        else:
            response = RedirectResponse("/login", 303)
        await response(scope, receive, send)
