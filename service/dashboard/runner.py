"""A running dashboard: the feed (subscriber + control) and uvicorn serving the app, on one event loop.

    async with running_dashboard("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557", port=0) as dash:
        print(dash.url)          # http://127.0.0.1:<free port>/

``scanlens dashboard`` runs exactly this in its own process until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from ..client import CurveClient
from . import defaults
from .feed import Feed
from .state import DashboardState
from .web import create_app, is_loopback

DEFAULT_MAX_RATE_HZ = defaults.MAX_RATE_HZ

log = logging.getLogger(__name__)

DEFAULT_PUBLISH, DEFAULT_CONTROL = defaults.PUBLISH, defaults.CONTROL
DEFAULT_HOST, DEFAULT_PORT = defaults.HOST, defaults.PORT


class RemoteBindRefused(ValueError):
    """A non-loopback host without ``allow_remote``."""


@dataclass
class Dashboard:
    url: str
    host: str
    port: int
    state: DashboardState
    feed: Feed
    server: uvicorn.Server
    tasks: tuple[asyncio.Task, ...] = ()  # the feed's and the web server's


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def running_dashboard(publish: str = DEFAULT_PUBLISH, control: str = DEFAULT_CONTROL, *,
                            host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                            max_rate_hz: float = DEFAULT_MAX_RATE_HZ, curve: CurveClient | None = None,
                            keep_closed: int = 8, allow_remote: bool = False) -> AsyncIterator[Dashboard]:
    """Follow the service at ``publish``/``control`` and serve the page on ``host:port`` (0: a free
    port) until the block exits. A non-loopback ``host`` needs ``allow_remote`` (RemoteBindRefused);
    a malformed endpoint is a ZMQError and a port in use an OSError, both before anything runs."""
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise RemoteBindRefused(
            f"refusing to serve the dashboard on {host} (not a loopback address): anyone who can reach it sees "
            "every scan. Reach a loopback dashboard through an SSH tunnel (docs/operations.md, Dashboard), or "
            "pass --allow-remote on a network you trust")
    state = DashboardState(keep_closed=keep_closed, publish=publish, control=control)
    feed = Feed(state, publish, control, curve=curve)
    feed.open()
    try:
        sock = _bind(host, port)
    except BaseException:
        feed.close()
        raise
    app = create_app(state, max_rate_hz=max_rate_hz, loopback_only=loopback)
    config = uvicorn.Config(app, ws="websockets-sansio", lifespan="off", log_level="warning", access_log=False,
                            ws_max_size=64 * 1024, log_config=None)
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    feeding = asyncio.create_task(feed.run(), name="dashboard-feed")
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="dashboard-http")
    dash = Dashboard(f"http://{shown}:{bound[1]}/", bound[0], bound[1], state, feed, server, (feeding, serving))
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises what stopped it
                raise RuntimeError("the dashboard's web server stopped at start")
            await asyncio.sleep(0.01)
        yield dash
    finally:
        server.should_exit = True
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        try:
            await asyncio.wait_for(serving, timeout=5.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        finally:
            sock.close()
            feed.close()


async def serve_forever(**options) -> None:
    """``running_dashboard(**options)`` until the web server stops (uvicorn stops it at Ctrl-C / SIGTERM) or
    the feed fails; prints the URL first."""
    async with running_dashboard(**options) as dash:
        print(f"scanlens dashboard on {dash.url} (service: publish {dash.state.publish}, control "
              f"{dash.state.control}; at most {options.get('max_rate_hz', DEFAULT_MAX_RATE_HZ):g} updates/s "
              "per page)", flush=True)
        done, _ = await asyncio.wait(dash.tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
