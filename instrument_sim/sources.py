"""Scan sources: what a simulated instrument plays — modality, scan shape, signal axis, lines on demand.

A source is anything with ``modality``, ``shape``, ``axis``, ``meta`` and ``line(row)``; the
streaming code (``stream.py``) knows nothing about the physics behind it. Each simulator defines its
own (``EELSSource`` lives in :mod:`.eels.source` and is re-exported here, where it used to live).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from scanlens.protocol.messages import Axis

from .eels.source import EELSSource

__all__ = ["EELSSource", "ScanSource"]


class ScanSource(Protocol):
    modality: str
    shape: tuple[int, int]
    axis: Axis
    meta: dict[str, Any]
    # optional: components: list[str] — names of the last axis of multi-component lines

    def line(self, row: int) -> np.ndarray: ...
