"""Raw ingest messages built by hand, for tests that send what the client API would refuse to."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from ..protocol.messages import Data


def data_frames(scan_id: str, seq: int, row: int, array: np.ndarray, **override: Any) -> list[bytes]:
    """The frames of a ``data`` message carrying ``array``, with header keys replaced by ``override``
    (e.g. ``dtype="float16"``: a header that contradicts, or fails, validation)."""
    header = Data(scan_id=scan_id, seq=seq, row=row, shape=array.shape, dtype=array.dtype.name).model_dump(
        mode="json", exclude_none=True)
    header.update(override)
    return [msgpack.packb(header), array.tobytes()]


def nested_map(levels: int) -> dict:
    """``{"a": {"a": ...}}`` nested ``levels`` deep: a ``meta`` for the depth limit (docs/protocol.md §3.1)."""
    root: dict = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root
