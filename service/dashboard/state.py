"""What the dashboard knows: the latest state of every open and recent scan, the service's status, recent events.

One :class:`DashboardState` per dashboard process, fed by the subscriber task (``feed.py``) and read by
every page's sender (``web.py``). It is a plain object on the event loop (no locks): the feed mutates
it, and every mutation advances ``version`` and wakes the pages' "changed" flags (``listen``). Each part
remembers the version at which it last changed, so a page that has seen version ``v`` of a scan gets
only what changed after ``v`` (``changes_since``) — and a page that has seen nothing gets everything.

Spectral scans are assembled with the client's own :class:`~scanlens.client.ScanResult` (maps by
``row``/``col0``, ``fill_from`` a snapshot); movies keep the latest ``frame_result`` of each image
recognizer plus a bounded history of each defect track. Nothing here grows with time: events,
tracks and closed scans are capped, latencies are folded into a fixed histogram.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..client import ControlReply, Received, ScanResult
from ..protocol.codec import validate_tolerant
from ..protocol.messages import Event, FrameResult, Maps, ScanStarted, ScanSummary, Status

#: latency histogram: 10 log-spaced bins per decade from 0.1 ms to 10 s (first and last bins catch the rest)
HIST_EDGES_MS = np.logspace(-1, 4, 51)
#: positions kept per defect track, and frames a track may go unseen before it is forgotten
TRACK_POINTS = 64
TRACK_FORGET_FRAMES = 30
MAX_TRACKS = 512


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN; browsers refuse it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dump_json(model: Any) -> dict[str, Any]:
    return json_safe(model.model_dump(mode="json", exclude_none=True))


def latency_bin(ms: float) -> int:
    return int(min(max(np.searchsorted(HIST_EDGES_MS, ms, side="right") - 1, 0), len(HIST_EDGES_MS) - 2))


@dataclass
class ScanView:
    """One scan as the dashboard holds it. ``v_*`` are the state versions at which each part last changed."""

    started: ScanStarted
    t_started: float
    v_started: int
    result: ScanResult | None = None  # spectral scans
    row_v: np.ndarray | None = None  # spectral: version at which each row last changed
    frames: dict[str, dict[str, Any]] = field(default_factory=dict)  # movies: recognizer -> latest frame
    tracks: dict[int, collections.deque] = field(default_factory=dict)  # movies: track id -> (frame, x, y, class)
    v_frames: int = 0
    summary: ScanSummary | None = None
    v_summary: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(HIST_EDGES_MS) - 1, np.int64))
    v_hist: int = 0
    messages: int = 0  # maps / frame_result messages received live
    event_counts: collections.Counter = field(default_factory=collections.Counter)
    recovered: bool = False  # maps (partly) from a snapshot
    gone: bool = False  # the service no longer knows this scan (restarted) and no summary came

    @property
    def scan_id(self) -> str:
        return self.started.scan_id

    @property
    def imaging(self) -> bool:
        return self.started.pixel_size is not None

    @property
    def open(self) -> bool:
        return self.summary is None and not self.gone

    def brief(self) -> dict[str, Any]:
        """One entry of the page's scan list."""
        s = self.started
        rows, cols = s.shape
        if self.imaging:
            done = max((f["frame"] + 1 for f in self.frames.values()), default=0)
            total = s.frames
        else:
            assert self.result is not None
            done = int(max((f.sum() for f in self.result.filled.values()), default=0))
            total = rows * cols
        state = self.summary.state if self.summary is not None else ("gone" if self.gone else "open")
        return {"id": s.scan_id, "modality": s.modality, "shape": [rows, cols], "imaging": self.imaging,
                "state": state, "done": done, "total": total, "recognizers": list(s.recognizers),
                "t_started": self.t_started, "events": dict(self.event_counts)}


class DashboardState:
    """The latest state of every open and recent scan (the newest ``keep_closed`` closed ones), the last
    status heartbeat, and the last ``max_events`` events."""

    def __init__(self, *, keep_closed: int = 8, max_events: int = 200, publish: str = "", control: str = ""):
        self.keep_closed = keep_closed
        self.publish, self.control = publish, control
        self.version = 0
        self.scans: dict[str, ScanView] = {}  # in order of start
        self.v_scans = 0  # the scan list (membership or state) last changed
        self.status: dict[str, Any] | None = None
        self.v_status = 0
        self.connected = False
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self.n_events = 0
        self._listeners: set[asyncio.Event] = set()
        self.messages = 0  # everything received from the service
        self._list_cache: tuple[int, list[dict[str, Any]]] = (-1, [])

    # ------------------------------------------------------------------ change notification

    def listen(self) -> asyncio.Event:
        """A flag set at every change (and now, so a new page gets the state so far); ``unlisten`` when done."""
        flag = asyncio.Event()
        flag.set()
        self._listeners.add(flag)
        return flag

    def unlisten(self, flag: asyncio.Event) -> None:
        self._listeners.discard(flag)

    def _bump(self) -> int:
        self.version += 1
        for flag in self._listeners:
            flag.set()
        return self.version

    # ------------------------------------------------------------------ feeding

    def set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.v_status = self._bump()

    def on_message(self, msg: Received) -> str | None:
        """Take one published message. Returns the id of a scan the dashboard should recover from a
        ``snapshot`` (maps of a scan it never saw start, or a summary with pixels it missed), else None."""
        self.messages += 1
        h = msg.header
        if isinstance(h, Status):
            return self._on_status(h)
        if isinstance(h, ScanStarted):
            self._start(h)
            return None
        if isinstance(h, Event):
            self._on_event(h)
            return None
        view = self.scans.get(getattr(h, "scan_id", None) or "")
        if isinstance(h, Maps):
            if view is None or view.result is None or h.recognizer not in view.result.maps:
                return h.scan_id  # joined mid-scan without its scan_started (a missed start)
            known = view.result.maps[h.recognizer]
            try:  # arrays a newer service adds, or that contradict scan_started, are not drawn
                view.result.add(h, {k: a for k, a in msg.arrays.items() if k in known})
            except (ValueError, IndexError):
                return None
            view.result.latencies_ms.clear()  # folded into the histogram instead
            v = self._bump()
            assert view.row_v is not None
            view.row_v[h.row] = v
            view.hist[latency_bin(h.latency_ms)] += 1
            view.messages += 1
            view.v_hist = v
            return None
        if isinstance(h, FrameResult):
            if view is None or not view.imaging:
                return h.scan_id
            self._on_frame(view, h, msg.arrays)
            return None
        if isinstance(h, ScanSummary):
            if view is None:
                return h.scan_id
            view.summary = h
            view.v_summary = self.v_scans = self._bump()
            self._retire()
            if view.result is not None:
                view.result.summary = h
            if view.result is not None and view.result.missing_pixels():
                return h.scan_id
        return None

    def _on_status(self, h: Status) -> str | None:
        self.status = dump_json(h)
        self.connected = True
        self.v_status = self._bump()
        # a scan we hold as open that the service no longer has, and no summary came: ask what became of it
        still = set(h.open_scans)
        for view in self.scans.values():
            if view.open and view.scan_id not in still:
                return view.scan_id
        return None

    def _start(self, h: ScanStarted) -> ScanView:
        v = self._bump()
        view = ScanView(h, time.time(), v)
        if h.pixel_size is None:
            view.result = ScanResult.begin(h)
            view.row_v = np.zeros(h.shape[0], np.int64)  # no row has data yet
        view.v_frames = view.v_summary = view.v_hist = v
        self.scans.pop(h.scan_id, None)  # a closed scan id reused: the new scan replaces it, at the end
        self.scans[h.scan_id] = view
        self.v_scans = v
        self._retire()
        return view

    def _retire(self) -> None:
        closed = [sid for sid, view in self.scans.items() if not view.open]
        for sid in closed[:max(0, len(closed) - self.keep_closed)]:
            del self.scans[sid]

    def _on_event(self, h: Event) -> None:
        seqs = list(h.seqs or [])
        entry = {"n": self.n_events, "t": time.time(), "scan_id": h.scan_id, "level": h.level, "code": h.code,
                 "reason": h.reason[:500], "seq": h.seq, "seqs": seqs[:16], "n_seqs": len(seqs)}
        self.n_events += 1
        self.events.append(entry)
        view = self.scans.get(h.scan_id or "")
        if view is not None:
            view.event_counts[h.code] += max(1, len(seqs))
            self.v_scans = self._bump()
        else:
            self._bump()

    def _on_frame(self, view: ScanView, h: FrameResult, arrays: dict[str, np.ndarray]) -> None:
        view.frames[h.recognizer] = {"frame": h.frame, "seq": h.seq, "latency_ms": h.latency_ms,
                                     "n_atoms": h.n_atoms, "n_defects": h.n_defects, "novelty": h.novelty,
                                     "novel": h.novel, "tracking": json_safe(h.tracking),
                                     "specs": [dump_json(s) for s in h.arrays], "arrays": dict(arrays)}
        defects = arrays.get("defects")
        if defects is not None and defects.ndim == 2 and defects.shape[1] >= 5:
            for x, y, cls, _conf, track in defects[:, :5].tolist():
                if not math.isfinite(track) or track < 0:
                    continue
                points = view.tracks.setdefault(int(track), collections.deque(maxlen=TRACK_POINTS))
                points.append((h.frame, x, y, cls))
        stale = [t for t, pts in view.tracks.items() if pts[-1][0] < h.frame - TRACK_FORGET_FRAMES]
        for t in stale:
            del view.tracks[t]
        while len(view.tracks) > MAX_TRACKS:
            del view.tracks[min(view.tracks, key=lambda t: view.tracks[t][-1][0])]
        v = self._bump()
        view.v_frames = view.v_hist = v
        view.hist[latency_bin(h.latency_ms)] += 1
        view.messages += 1

    def on_snapshot(self, scan_id: str, reply: ControlReply) -> None:
        """Take a ``snapshot`` reply: a scan begun before the dashboard (or whose messages it missed) gets
        its maps so far, its ``scan_started`` and, when closed, its summary. A service that no longer
        knows the scan answers ``ok: false`` instead: see :meth:`forget`."""
        res = reply.result
        started = res.get("started")
        view = self.scans.get(scan_id)
        if started is None and view is None:
            return  # a service too old to say how the scan started: nothing to draw it with
        if view is None:
            view = self._start(validate_tolerant(ScanStarted, started))
        v = self._bump()
        if view.result is not None:
            view.result.fill_from(reply)
            assert view.row_v is not None
            view.row_v[:] = v
        else:
            for rec in view.started.recognizers:
                arrays = {name.split("/", 1)[1]: a for name, a in reply.arrays.items()
                          if name.startswith(rec + "/") and not name.endswith("/filled")}
                if "classes" in arrays and rec not in view.frames:
                    specs = [dump_json(s) for s in reply.reply.arrays if s.name.startswith(rec + "/")]
                    for s in specs:
                        s["name"] = s["name"].split("/", 1)[1]
                    view.frames[rec] = {"frame": None, "seq": None, "latency_ms": None, "novelty": None,
                                        "novel": None, "tracking": None, "specs": specs, "arrays": arrays,
                                        "n_atoms": len(arrays.get("atoms", ())),
                                        "n_defects": len(arrays.get("defects", ()))}
            view.v_frames = v
        view.recovered = True
        summary = res.get("summary")
        if summary is not None and view.summary is None:
            view.summary = validate_tolerant(ScanSummary, summary)
            view.v_summary = v
            if view.result is not None:
                view.result.summary = view.summary
        if view.summary is not None and view.summary.latency_ms_p50 is not None and not view.hist.any():
            # joined after the scan: no live latencies, so the summary's percentiles stand in (drawn as such)
            view.v_hist = v
        self.v_scans = v
        self._retire()

    def forget(self, scan_id: str) -> None:
        """The service does not know ``scan_id`` (it restarted, or the scan left its retention): an open
        scan is marked gone, so it stops looking live."""
        view = self.scans.get(scan_id)
        if view is not None and view.open:
            view.gone = True
            self.v_scans = self._bump()
            self._retire()

    # ------------------------------------------------------------------ reading

    def scan_list(self) -> list[dict[str, Any]]:
        """The page's scan list (computed once per state version, however many pages ask)."""
        if self._list_cache[0] != self.version:
            self._list_cache = (self.version, [view.brief() for view in self.scans.values()])
        return self._list_cache[1]

    def events_after(self, n: int) -> list[dict[str, Any]]:
        """Events with serial number >= ``n`` that are still held."""
        return [e for e in self.events if e["n"] >= n]
