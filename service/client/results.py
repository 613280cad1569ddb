"""Assembling what a subscriber receives of one scan: full-size maps (``ScanResult``) or per-frame results
of a movie (``MovieResult``), with the scan's events and summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..protocol.messages import Event, Maps, ScanStarted, ScanSummary, TrainUpdate, line_slice
from .control import ControlReply, ServiceError


@dataclass
class ScanResult:
    """Everything a subscriber saw of one scan, with the maps assembled to full size."""

    started: ScanStarted
    maps: dict[str, dict[str, np.ndarray]]  # recognizer -> output -> [rows, cols, ...]
    filled: dict[str, np.ndarray]  # recognizer -> bool [rows, cols]
    events: list[Event] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    summary: ScanSummary | None = None
    #: live training of this scan (docs/live-training.md): every train_update, and each recognizer's revision
    train_updates: list[TrainUpdate] = field(default_factory=list)
    revisions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def begin(cls, started: ScanStarted) -> ScanResult:
        rows, cols = started.shape
        maps = {rec: {s.name: np.zeros((rows, cols, *s.shape), dtype=s.dtype) for s in specs}
                for rec, specs in started.outputs.items()}
        filled = {rec: np.zeros((rows, cols), dtype=bool) for rec in started.outputs}
        return cls(started, maps, filled)

    recovered: bool = False  # maps completed from a snapshot after messages were missed

    def missing_pixels(self) -> int:
        """Pixels the summary says were recognized but whose maps this subscriber did not receive."""
        if self.summary is None:
            return 0
        return sum(max(0, s.pixels_recognized - int(self.filled[rec].sum()))
                   for rec, s in self.summary.recognizers.items() if rec in self.filled)

    def fill_from(self, snapshot: ControlReply) -> None:
        self.revisions.update(snapshot.result.get("revisions") or {})
        for rec, outputs in self.maps.items():
            for name, values in outputs.items():
                values[...] = snapshot.arrays[f"{rec}/{name}"]
            self.filled[rec][...] = snapshot.arrays[f"{rec}/filled"].astype(bool)
        self.recovered = True

    def train(self, update: TrainUpdate) -> None:
        """A live training job's update; at ``swapped`` the new revision's maps start empty (its lines come
        again, re-recognized) and older revisions' maps are stale from then on."""
        self.train_updates.append(update)
        if update.state == "swapped" and update.outputs is not None:
            rows, cols = self.started.shape
            self.maps[update.recognizer] = {s.name: np.zeros((rows, cols, *s.shape), dtype=s.dtype)
                                            for s in update.outputs}
            self.filled[update.recognizer] = np.zeros((rows, cols), dtype=bool)
            self.revisions[update.recognizer] = update.revision

    def add(self, header: Maps, arrays: dict[str, np.ndarray]) -> None:
        if (header.revision or 0) < self.revisions.get(header.recognizer, 0) or header.recognizer not in self.maps:
            return  # made by a revision that has been replaced (or a recognizer this result never heard of)
        sl = line_slice(header.row, header.col0, header.n_pixels)
        for name, values in arrays.items():
            self.maps[header.recognizer][name][sl] = values
        self.filled[header.recognizer][sl] = True
        self.latencies_ms.append(header.latency_ms)


@dataclass
class MovieResult:
    """Everything a subscriber saw of one imaging scan: per frame the atoms, defects and (optionally)
    the class map of each image recognizer."""

    started: ScanStarted
    frames: dict[str, dict[int, dict[str, np.ndarray]]]  # recognizer -> frame index -> arrays
    events: list[Event] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    summary: ScanSummary | None = None
    #: recognizer -> the running tracking statistics of its latest frame result (live, before the summary)
    tracking: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_updates: list[TrainUpdate] = field(default_factory=list)  # live training of this movie


R = TypeVar("R", ScanResult, MovieResult)


def note_event(result: ScanResult | MovieResult | None, event: Event, scan_id: str) -> None:
    """Keep an event with the scan's result; a refusal before the scan started is an error."""
    if result is not None:
        result.events.append(event)
    elif event.code == "scan_rejected":
        raise ServiceError(f"scan {scan_id} rejected: {event.reason}")


def summarized(result: R | None, summary: ScanSummary, scan_id: str) -> R:
    """The result with its summary; a summary before the scan's ``scan_started`` is an error."""
    if result is None:
        raise ServiceError(f"summary for scan {scan_id} arrived before its scan_started: this subscriber joined "
                           "after the scan started (collect_scan(..., control=...) recovers its maps from a snapshot)")
    result.summary = summary
    return result
