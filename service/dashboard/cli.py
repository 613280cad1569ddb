"""``scanlens dashboard``: the live web page, in its own process (plugged in through the ``scanlens.commands``
entry point; the web stack is imported only when the command runs, so ``--help`` works without it)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import defaults

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.callback(invoke_without_command=True)
def dashboard(
    publish: Annotated[str, typer.Option(help="the service's publish (PUB) endpoint to subscribe to")] = defaults.PUBLISH,
    control: Annotated[str, typer.Option(
        help="the service's control endpoint (scans and snapshots begun before the dashboard)")] = defaults.CONTROL,
    host: Annotated[str, typer.Option(
        help="address to serve the page on; loopback by default (reach it from elsewhere with an SSH tunnel)")
    ] = defaults.HOST,
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to serve the page on (0: any free port)")] = defaults.PORT,
    max_rate_hz: Annotated[float, typer.Option(
        "--max-rate-hz", min=0.1, max=1000.0, help="most updates per second sent to one page")] = defaults.MAX_RATE_HZ,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="allow a non-loopback --host: anyone who can reach it sees every scan (no login)")
    ] = False,
    keep_scans: Annotated[int, typer.Option(min=0, max=64, help="closed scans kept for the list")] = 8,
    client_key: Annotated[Optional[Path], typer.Option(
        "--client-key", help="this client's secret CURVE key file, for a service with authentication; with "
                             "--server-key")] = None,
    server_key: Annotated[Optional[Path], typer.Option(
        "--server-key", help="the service's public CURVE key file (server.key); with --client-key")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "WARNING",
) -> None:
    """Live web dashboard of a running service, served by its own process: open http://127.0.0.1:8765/.

    It subscribes to the service like any client, so a slow or crashed dashboard never slows
    acquisition. It shows every open and recent scan: class maps with legends, confidence, parameter
    maps with colourbars and units, novelty, PCA scores, the per-pixel outputs under the cursor, movie
    frames with atoms, defects and tracks, D with units, counters, events and a latency histogram; a
    page that joins mid-scan gets the scan so far. Each page gets at most --max-rate-hz updates per
    second, always the newest state. Needs the `dashboard` extra (Starlette, uvicorn, websockets).
    """
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    try:
        import zmq

        from ..client import client_keys
        from .runner import RemoteBindRefused, serve_forever
    except ImportError as exc:
        typer.echo(f"error: the dashboard needs its extra: pip install \"scanlens[dashboard]\" ({exc})", err=True)
        raise typer.Exit(2) from None
    try:
        curve = client_keys(client_key, server_key)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(serve_forever(publish=publish, control=control, host=host, port=port, max_rate_hz=max_rate_hz,
                                  curve=curve, keep_closed=keep_scans, allow_remote=allow_remote))
    except RemoteBindRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except zmq.ZMQError as exc:
        typer.echo(f"error: cannot connect to the service ({publish}, {control}): {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass
