"""A scan's raw data kept in the service (``scan_start`` with ``retain``), for live training and re-recognition.

By default the service keeps nothing of what it receives once the recognizers are done with it (the speed
figures depend on that). A scan that asks for ``retain`` gets its data copied as it is accepted: a spectral
scan's spectra as float32 on the scan's own axis, ``[rows, cols, channels(, components)]``, with the list of
lines that filled them (seq, row, first column, length), so that a new recognizer can redo them in order; a
movie's last ``keep`` frames. The most it can hold is reserved in the memory budget with the scan's maps
(``footprint``). ``docs/live-training.md`` describes how a ``train`` request uses it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from ..protocol.messages import ScanStart


@dataclass(frozen=True)
class Line:
    """One accepted data message, as kept: where its pixels went."""

    seq: int
    row: int
    col0: int
    n: int


class SpectraRetention:
    """The spectra of a spectral scan, as float32 at their pixels; the accepted lines in arrival order."""

    def __init__(self, start: ScanStart):
        rows, cols = start.shape
        per_pixel = (start.axis.size,) if not start.components else (start.axis.size, len(start.components))
        # np.zeros maps lazily: resident memory grows with the lines received, never past the reservation
        self.values = np.zeros((rows, cols, *per_pixel), dtype=np.float32)
        self.have = np.zeros((rows, cols), dtype=bool)
        self.lines: list[Line] = []

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.have.nbytes

    def keep(self, seq: int, row: int, col0: int, spectra: np.ndarray) -> None:
        n = spectra.shape[0]
        self.values[row, col0:col0 + n] = spectra  # converted to float32 here
        self.have[row, col0:col0 + n] = True
        self.lines.append(Line(seq, row, col0, n))

    def line_values(self, line: Line) -> np.ndarray:
        """The kept spectra of one line (a view)."""
        return self.values[line.row, line.col0:line.col0 + line.n]


class FrameRetention:
    """The last ``keep`` frames of a movie, as float32, by frame index."""

    def __init__(self, start: ScanStart, keep: int):
        self.keep_frames = keep
        self.shape = tuple(start.shape)
        self.frames: collections.OrderedDict[int, tuple[int, np.ndarray]] = collections.OrderedDict()

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4 * self.keep_frames

    def keep(self, seq: int, frame: int, image: np.ndarray) -> None:
        if self.keep_frames <= 0:
            return
        self.frames[frame] = (seq, image.astype(np.float32, copy=True))
        while len(self.frames) > self.keep_frames:
            self.frames.popitem(last=False)

    def frame(self, index: int) -> np.ndarray | None:
        kept = self.frames.get(index)
        return None if kept is None else kept[1]


Retention = SpectraRetention | FrameRetention


def retention_for(start: ScanStart, keep_frames: int) -> Retention | None:
    """What a scan keeps: nothing unless its ``scan_start`` asks for ``retain``."""
    if not start.retain:
        return None
    if start.imaging:
        return FrameRetention(start, keep_frames)
    return SpectraRetention(start)
