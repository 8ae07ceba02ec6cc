"""The operator page's web application (Starlette, an ASGI framework): the page, its live state as
Server-Sent Events, the pictures, pause / resume, and the station's saved evidence.

Everything the page shows live comes from memory (LiveView, the station's stats); files are read
only for saved evidence under OUT/frames and OUT/video, by Starlette's StaticFiles (which refuses
paths that leave its folder, symlinks out of it included) on the server's worker threads. The
station never waits for this server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..credentials import masked
from ..metrics import health
from ..station import Station
from .access import COOKIE, TokenGate, session_value
from .live import Anomaly, LiveView

STATIC = Path(__file__).with_name("static")
UPDATE_S = 0.25  # how often a connected page is sent the station's state
KEEPALIVE_S = 15.0
PICTURES = {"overlay": "image/jpeg", "thumbnail": "image/jpeg", "mask": "image/png"}
NO_STORE = {"Cache-Control": "no-store"}


class PageState:
    """What the page shows, read from the station and the live view when asked."""

    def __init__(self, station: Station, view: LiveView, out: Path) -> None:
        self.station, self.view, self.out = station, view, out
        self.started = time.time()

    def snapshot_text(self) -> str:
        """The state as JSON, credentials masked (a server URL in the run record may carry them)."""
        live = self.view.snapshot()
        status, checks = health(self.station)
        sources = {}
        for name, counts in self.station.stats.per_source().items():
            counts.pop("skipped_items")
            source = next(s for s in self.station.sources if s.name == name)
            sources[name] = {**counts, **live["tiles"][name], "ended": source.finished}
        state = {
            "station": {
                "run": self.station.run_id,
                "started": self.started,
                "now": time.time(),
                "healthy": status,
                "status": checks["status"],
                "record": self.station.current.record,
            },
            "sources": sources,
            "anomalies": live["anomalies"],
            "sinks": {sink.kind: {**sink.counts(), **sink.state()} for sink in self.station.sinks},
            "outputs": {name: output.state() for name, output in self.station.monitored.items()},
        }
        return masked(json.dumps(state, default=str))

    def saved(self, entry: Anomaly, kind: str) -> Path | None:
        """The picture the station saved for this anomaly (--save), if it is there."""
        suffix = {"overlay": "overlay", "thumbnail": "overlay", "mask": "mask"}[kind]
        folder = (self.out / "frames").resolve()
        path = (folder / entry.source / entry.run / f"{entry.frame:08d}_{suffix}.png").resolve()
        return path if path.is_relative_to(folder) and path.is_file() else None


def build_app(state: PageState, token: str | None, closing: threading.Event) -> TokenGate:
    """The application behind the token gate; `closing` ends the live streams (the server stops)."""
    gate: TokenGate | None = None

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=NO_STORE)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return FileResponse(STATIC / "login.html", headers=NO_STORE)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if not gate.accepts(form.get("token", [""])[0]):
            return RedirectResponse("/login?refused=1", 303)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, session_value(gate.token), httponly=True, samesite="strict")
        return response

    async def current(request: Request) -> Response:
        return Response(state.snapshot_text(), media_type="application/json", headers=NO_STORE)

    async def updates(request: Request) -> Response:
        async def stream():
            last, quiet_since = None, time.monotonic()
            while not closing.is_set():
                text = state.snapshot_text()
                if text != last:
                    yield f"event: state\ndata: {text}\n\n"
                    last, quiet_since = text, time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    yield ": still here\n\n"
                    quiet_since = time.monotonic()
                await asyncio.sleep(UPDATE_S)

        headers = {**NO_STORE, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def frame(request: Request) -> Response:
        picture = state.view.picture(request.path_params["source"])
        if picture is None:
            return JSONResponse({"error": "no picture of this source yet"}, 404)
        return Response(picture, media_type="image/jpeg", headers=NO_STORE)

    async def anomaly(request: Request) -> Response:
        kind = request.path_params["kind"]
        entry = state.view.anomaly(request.path_params["id"])
        if kind not in PICTURES or entry is None:
            return JSONResponse({"error": "no such anomaly picture (the list keeps the latest ones only)"}, 404)
        picture = getattr(entry, kind)
        if picture is not None:
            return Response(picture, media_type=PICTURES[kind])
        saved = await run_in_threadpool(state.saved, entry, kind)  # a slow disk holds a worker, not the loop
        if saved is None:
            return JSONResponse({"error": "this anomaly's picture was not drawn and not saved (--save)"}, 404)
        return FileResponse(saved, media_type="image/png")

    async def steer(request: Request) -> Response:
        name, action = request.path_params["source"], request.path_params["action"]
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            return JSONResponse({"error": 'the body must be JSON, e.g. {"operator": "name"}'}, 400)
        operator = str(body.get("operator") or "").strip()[:64] or None
        by = {"operator": operator, "address": request.client.host if request.client else None}
        try:
            if action == "pause":
                changed = state.station.pause_source(name, by)
            elif action == "resume":
                changed = state.station.resume_source(name, by)
            else:
                return JSONResponse({"error": f"unknown action {action!r}: pause or resume"}, 404)
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, 404)
        return JSONResponse({"source": name, "action": action, "changed": changed})

    routes = [
        Route("/", page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/api/state", current),
        Route("/api/updates", updates),
        Route("/api/frame/{source}", frame),
        Route("/api/anomalies/{id:int}/{kind}", anomaly),
        Route("/api/sources/{source}/{action}", steer, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
        Mount("/files/frames", StaticFiles(directory=state.out / "frames", check_dir=False)),
        Mount("/files/video", StaticFiles(directory=state.out / "video", check_dir=False)),
    ]
    gate = TokenGate(Starlette(routes=routes), token)
    return gate
