"""``scanlens dashboard``: a live web page of a running service, served by its own process.

The dashboard is a subscriber like any other (``docs/operations.md``, Dashboard): a slow or crashed
dashboard never slows acquisition, and the service never imports it (an import contract in
``pyproject.toml``). Needs the ``dashboard`` extra (Starlette, uvicorn, websockets); the page itself is
plain JavaScript drawing on ``<canvas>``, served from this package (``static/``), with no build step and
nothing fetched from elsewhere.

    async with running_dashboard(publish, control, port=0) as dash:   # the feed plus uvicorn
        print(dash.url)

Modules by job, bottom up: ``state`` (the latest state of every open and recent scan, fed message by
message), ``wire`` (what one page gets: binary frames of a JSON header and raw arrays, only what it has
not seen), ``feed`` (the ``Subscriber`` and the ``Control`` catch-up that feed the state), ``web`` (the
Starlette app: the page, and one websocket per browser with a single dirty flag and a rate cap),
``runner`` (feed plus uvicorn on one event loop), ``cli`` (the command), ``defaults``.

The names below are imported on first use, so ``scanlens dashboard --help`` works without the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .feed import Feed
    from .runner import Dashboard, RemoteBindRefused, running_dashboard, serve_forever
    from .state import DashboardState, ScanView
    from .web import Page, create_app, is_loopback
    from .wire import PageCursor, pack, unpack, update

_EXPORTS: dict[str, str] = {
    "DashboardState": ".state", "ScanView": ".state",
    "PageCursor": ".wire", "pack": ".wire", "unpack": ".wire", "update": ".wire",
    "Feed": ".feed",
    "Page": ".web", "create_app": ".web", "is_loopback": ".web",
    "Dashboard": ".runner", "RemoteBindRefused": ".runner", "running_dashboard": ".runner",
    "serve_forever": ".runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
