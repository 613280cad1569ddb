"""What one page gets over its websocket: binary frames of a small JSON header plus raw array buffers.

A frame is ``[u32 little-endian n][n bytes of UTF-8 JSON header][buffers]``. The header's ``arrays``
lists ``{name, dtype, shape, offset, nbytes}`` for each buffer, ``offset`` counted from the start of the
frame and a multiple of 8, so the page wraps each one as a typed array without copying
(``new Float32Array(frame, offset, n)``). Arrays travel as ``float32`` or ``uint8`` only, little-endian
(what every browser is).

An update carries only what changed since the page's :class:`PageCursor`: the status and scan list
(small, always), events it has not had, and of the scan it shows the rows changed since it last saw
that scan (all of them the first time: a page that joins mid-scan gets the scan so far).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .state import HIST_EDGES_MS, DashboardState, ScanView, dump_json, json_safe

ALIGN = 8
#: events sent to a page that has none yet
FIRST_EVENTS = 100


@dataclass
class PageCursor:
    """How far one page is: which scan it shows, the state version of that scan it has, the next event."""

    selected: str | None = None
    seen: int = 0  # 0: the page has nothing of ``selected`` yet
    next_event: int = -1  # -1: no events yet (it gets the last FIRST_EVENTS)

    def select(self, scan_id: str | None) -> None:
        if scan_id != self.selected:
            self.selected, self.seen = scan_id, 0


def _wire_array(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.dtype != np.uint8:
        a = a.astype("<f4", copy=False)
    return np.ascontiguousarray(a)


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One binary frame: the header (with the array table added) and the arrays' bytes, 8-aligned."""
    header = json_safe(header)  # JSON has no NaN or Infinity: such values travel as null
    wired = {name: _wire_array(a) for name, a in arrays.items()}
    table = []
    offset = 0
    for name, a in wired.items():
        table.append({"name": name, "dtype": "uint8" if a.dtype == np.uint8 else "float32",
                      "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes})
        offset += -(-a.nbytes // ALIGN) * ALIGN
    head = json.dumps({**header, "arrays": table}, separators=(",", ":"), allow_nan=False).encode()
    start = -(-(4 + len(head)) // ALIGN) * ALIGN
    for entry in table:
        entry["offset"] += start
    # the offsets changed the header's length: re-encode with padding until it fits before ``start``
    while True:
        head = json.dumps({**header, "arrays": table}, separators=(",", ":"), allow_nan=False).encode()
        need = -(-(4 + len(head)) // ALIGN) * ALIGN
        if need <= start:
            break
        for entry in table:
            entry["offset"] += need - start
        start = need
    parts = [struct.pack("<I", len(head)), head, b" " * (start - 4 - len(head))]
    for a in wired.values():
        parts.append(a.tobytes())
        parts.append(b"\0" * (-a.nbytes % ALIGN))
    return b"".join(parts)


def unpack(frame: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The inverse of :func:`pack` (for tests and tools; the page does this in JavaScript)."""
    (n,) = struct.unpack_from("<I", frame)
    header = json.loads(frame[4:4 + n])
    arrays = {}
    for e in header["arrays"]:
        dtype = np.uint8 if e["dtype"] == "uint8" else np.dtype("<f4")
        arrays[e["name"]] = np.frombuffer(frame, dtype, e["nbytes"] // np.dtype(dtype).itemsize,
                                          e["offset"]).reshape(e["shape"])
    return header, arrays


def _spectral(view: ScanView, seen: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    assert view.result is not None and view.row_v is not None
    changed = np.flatnonzero(view.row_v > seen)
    if len(changed) == 0:
        return {"rows": None}
    r0, r1 = int(changed[0]), int(changed[-1]) + 1
    for rec, outputs in view.result.maps.items():
        for name, values in outputs.items():
            arrays[f"{rec}/{name}"] = values[r0:r1]
        arrays[f"{rec}/filled"] = view.result.filled[rec][r0:r1]
    return {"rows": [r0, r1]}


def _movie(view: ScanView, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    frames = {}
    for rec, f in view.frames.items():
        frames[rec] = {k: v for k, v in f.items() if k != "arrays"}
        for name, a in f["arrays"].items():
            arrays[f"{rec}/{name}"] = a
    points = [(t, *p) for t, pts in view.tracks.items() for p in pts]
    arrays["tracks"] = np.array(points, np.float32).reshape(-1, 5)  # track, frame, x, y, class
    return {"frames": frames}


def update(state: DashboardState, cursor: PageCursor, *, extra: dict[str, Any] | None = None) -> bytes:
    """The next frame for a page at ``cursor``, and the cursor advanced past it."""
    header: dict[str, Any] = {"kind": "update", "version": state.version, **(extra or {}),
                              "service": {"connected": state.connected, "publish": state.publish,
                                          "control": state.control, "messages": state.messages},
                              "status": state.status, "scans": state.scan_list()}
    if cursor.next_event < 0:
        events = list(state.events)[-FIRST_EVENTS:]
    else:
        events = state.events_after(cursor.next_event)
    header["events"] = events
    cursor.next_event = state.n_events
    arrays: dict[str, np.ndarray] = {}
    view = state.scans.get(cursor.selected or "")
    if view is not None:
        seen = cursor.seen
        full = seen == 0 or seen < view.v_started
        if full:
            seen = 0
        scan: dict[str, Any] = {"id": view.scan_id, "full": full, "messages": view.messages,
                                "recovered": view.recovered, "open": view.open}
        if full:
            scan["started"] = dump_json(view.started)
            scan["hist_edges_ms"] = HIST_EDGES_MS.tolist()
        if full or view.v_summary > seen:
            scan["summary"] = dump_json(view.summary) if view.summary is not None else None
        if full or view.v_hist > seen:
            scan["hist"] = view.hist.tolist()
        if view.imaging:
            if full or view.v_frames > seen:
                scan.update(_movie(view, arrays))
        else:
            scan.update(_spectral(view, seen, arrays))
        header["scan"] = scan
        cursor.seen = state.version
    else:
        header["scan"] = None
    return pack(header, arrays)
