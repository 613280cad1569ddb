"""The web side: a small Starlette app serving the page (``static/``) and one websocket per browser.

Each page has a single "dirty" flag, never a queue: the state sets it at every change, and the page's
sender task, when the flag is set, the page has acknowledged the previous frame and ``1 / max_rate_hz``
has passed since the last one, encodes the *latest* state (only what the page has not seen) and sends
it. Changes made while a frame is in flight only set the flag again, so a slow page gets fewer, newer
updates, and a page that never reads costs one frame in flight and nothing more — it cannot grow the
dashboard's memory or slow the other pages.

Pages talk back with small JSON text messages: ``{"ack": n}`` once they have taken in frame ``n`` (frames
are numbered 1, 2, ... on each connection), and
``{"select": scan_id}`` to switch scans (the next frame then carries that scan in full).

Served on loopback, the app answers only requests whose ``Host`` is a loopback name (no DNS rebinding),
and takes websockets only from its own origin (a web page elsewhere in the browser cannot read them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import defaults
from .state import DashboardState
from .wire import PageCursor, update

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_RATE_HZ = defaults.MAX_RATE_HZ


def is_loopback(host: str) -> bool:
    """A host name or address that only this machine can reach."""
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> str:
    return urlsplit("//" + value).hostname or ""


class Page:
    """One browser's websocket: reads acks and selections, sends the latest state at most ``max_rate_hz``."""

    def __init__(self, ws: WebSocket, state: DashboardState, max_rate_hz: float):
        self.ws, self.state = ws, state
        self.interval = 1.0 / max_rate_hz
        self.max_rate_hz = max_rate_hz
        self.cursor = PageCursor()
        self.acked = asyncio.Event()
        self.acked.set()
        self.frames = 0

    async def run(self) -> None:
        dirty = self.state.listen()
        tasks = [asyncio.create_task(self._read(dirty)), asyncio.create_task(self._send(dirty))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None and \
                        not isinstance(t.exception(), (WebSocketDisconnect, OSError, RuntimeError)):
                    log.error("page failed", exc_info=t.exception())
        finally:
            self.state.unlisten(dirty)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, dirty: asyncio.Event) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                msg = json.loads(message.get("text") or "")
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("ack") == self.frames:  # the frame just sent (a stale or invented ack lets nothing more through)
                self.acked.set()
            if "select" in msg and (msg["select"] is None or isinstance(msg["select"], str)):
                self.cursor.select(msg["select"])
                dirty.set()

    async def _send(self, dirty: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = -self.interval
        while True:
            await self.acked.wait()  # the page has drawn the previous frame: never two in flight
            await dirty.wait()
            delay = last + self.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the rate cap; changes meanwhile only keep the flag set
            dirty.clear()
            self.acked.clear()
            self.frames += 1
            frame = update(self.state, self.cursor, extra={"frame": self.frames, "max_rate_hz": self.max_rate_hz})
            last = loop.time()
            await self.ws.send_bytes(frame)


def create_app(state: DashboardState, *, max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
               loopback_only: bool = True) -> Starlette:
    """The dashboard's ASGI app over ``state`` (which the caller feeds, e.g. with :class:`~.feed.Feed`).

    ``loopback_only``: refuse requests whose Host is not a loopback name (for a dashboard bound to
    loopback, reached directly or through an SSH tunnel)."""
    if not max_rate_hz > 0:
        raise ValueError("max_rate_hz must be > 0")
    pages: set[Page] = set()

    def allowed(host: str) -> bool:
        return not loopback_only or is_loopback(_hostname(host))

    async def index(request: Request) -> Response:
        if not allowed(request.headers.get("host", "")):
            return PlainTextResponse("this dashboard answers on loopback only", status_code=403)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        if not allowed(request.headers.get("host", "")):
            return PlainTextResponse("this dashboard answers on loopback only", status_code=403)
        return JSONResponse({"connected": state.connected, "pages": len(pages), "scans": list(state.scans),
                             "messages": state.messages, "max_rate_hz": max_rate_hz})

    async def websocket(ws: WebSocket) -> None:
        host = ws.headers.get("host", "")
        origin = ws.headers.get("origin")
        if not allowed(host) or (origin is not None and urlsplit(origin).netloc != host):
            await ws.close(code=1008)  # policy violation: another site's page, or a rebound host name
            return
        await ws.accept()
        page = Page(ws, state, max_rate_hz)
        pages.add(page)
        try:
            await page.run()
        finally:
            pages.discard(page)

    app = Starlette(routes=[
        Route("/", index),
        Route("/healthz", health),
        WebSocketRoute("/ws", websocket),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    app.state.pages = pages
    return app
