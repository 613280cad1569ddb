"""scanlens for Nion Swift: stream spectrum images to a scanlens service while they are acquired and
show its maps (class, confidence, novelty, parameters) as data items that fill in during the scan.

Installed as the package ``nionswift_plugin.scanlens``; Swift instantiates ``ScanlensExtension`` at
start-up, which registers the scanlens panel (endpoints, recognizers, arm). ``streamer`` is Swift-free;
``acquisition`` imports Swift only when used; ``panel`` only inside Swift. See docs/nionswift.md.
"""

from __future__ import annotations

import typing


class ScanlensExtension:
    """Found by Swift's plug-in manager (a class named ``...Extension`` with an ``extension_id``)."""

    extension_id = "scanlens.nionswift"

    def __init__(self, api_broker: typing.Any) -> None:
        from . import panel

        panel.register()

    def close(self) -> None:
        from . import acquisition, panel

        panel.unregister()
        acquisition.disarm()
