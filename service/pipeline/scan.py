"""One scan: checks each data message against its ``scan_start``, accounts for every seq, holds the maps.

Accounting is the heart of the reliability promise: each seq of a scan ends up *recognized*,
*rejected* (with a reason), *lost* (never arrived), *skipped* (a frame the ``latest`` policy dropped)
or *late* (arrived after the scan closed), and the summary lists them. The bindings of the scan's
processors (``processor.py``) hold the full-resolution maps and latest frame results, filled in as
results come back; they are what a late subscriber gets from the ``snapshot`` request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..protocol.codec import ProtocolError, all_finite, buffer_to_array
from ..protocol.messages import ArraySpec, Data, Frame, Rejection, ScanStart, ScanSummary
from .processor import Binding, Processor, WorkItem, takes_of
from .retention import FrameRetention, Retention, SpectraRetention
from .seqs import SeqRanges, count_of, first_of
from .stats import latency_percentiles

#: How many lost seqs a summary and a ``lost`` event list one by one; all of them are in ``lost_ranges``.
LIST_LIMIT = 4096
#: The largest seq a sender can use when nothing else bounds it (a movie without ``frames``).
MAX_SEQ = 2**53


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class ScanState:
    start: ScanStart
    bindings: dict[str, Binding]
    t_start: float = field(default_factory=time.perf_counter)
    t_last: float = 0.0  # the manager's clock at the scan's last message (scan_timeout_s)
    received: SeqRanges = field(default_factory=SeqRanges)  # accepted seqs, as ranges
    rejected: dict[int, str] = field(default_factory=dict)
    late: list[int] = field(default_factory=list)  # the first LIST_LIMIT late seqs
    n_late: int = 0
    skipped: list[int] = field(default_factory=list)
    last_frame: int = -1
    pixels_received: int = 0
    in_flight: int = 0  # work items submitted and not yet back
    n_messages: int | None = None  # from scan_end
    summary: ScanSummary | None = None  # set once the scan is closed
    owner: str | None = None  # authenticated identity (CURVE public key) of the sender that started it
    not_running: dict[str, str] = field(default_factory=dict)  # recognizer -> why it cannot take this scan
    retained: Retention | None = None  # the raw data, when scan_start asked for retain (retention.py)

    @classmethod
    def open(cls, start: ScanStart, processors: list[Processor], owner: str | None = None) -> ScanState:
        """Bind every processor; AxisError (a refused scan) when the data cannot be fed to one."""
        return cls(start, {p.name: p.bind(start) for p in processors}, owner=owner)

    @property
    def scan_id(self) -> str:
        return self.start.scan_id

    @property
    def silent(self) -> bool:
        """Nothing has arrived since scan_start (a scan squatting on a slot)."""
        return not self.received and not self.rejected and self.n_messages is None

    def footprint(self) -> int:
        """What the scan reserves in the memory budget: every binding's most, and its retained data."""
        kept = self.retained.nbytes if self.retained is not None else 0
        return sum(b.footprint() for b in self.bindings.values()) + kept

    @property
    def max_messages(self) -> int:
        """The most messages this scan can have: each pixel of a spectral scan comes once (a message
        carries at least one), each frame of a movie with ``frames`` comes once; a movie without
        ``frames`` can count its pixels (frames x frame pixels) up to 2**53."""
        rows, cols = self.start.shape
        if takes_of(self.start) == "spectra":
            return rows * cols
        return self.start.frames if self.start.frames is not None else MAX_SEQ // (rows * cols)

    @property
    def ended(self) -> bool:
        return self.n_messages is not None

    @property
    def closed(self) -> bool:
        return self.summary is not None

    # ------------------------------------------------------------------ ingest side

    def _reject(self, data: Data | Frame, reason: str) -> ProtocolError:
        self.rejected[data.seq] = reason
        return ProtocolError("data_rejected", reason, scan_id=self.scan_id, seq=data.seq)

    def accept(self, data: Data, buffers: list[memoryview]) -> np.ndarray:
        """The spectra of a data message as a zero-copy array; ProtocolError (and a recorded rejection)
        when it contradicts ``scan_start`` or repeats a seq."""
        self._check_seq(data)
        if takes_of(self.start) != "spectra":
            raise self._reject(data, "this is an imaging scan (pixel_size in scan_start): send frame messages")
        rows, cols = self.start.shape
        n, channels = data.shape[:2]
        if channels != self.start.axis.size:
            raise self._reject(data, f"shape {list(data.shape)} has {channels} channels; "
                                     f"scan_start axis has {self.start.axis.size}")
        components = self.start.components
        if (len(data.shape) == 3) != bool(components) or (components and data.shape[2] != len(components)):
            want = f"{len(components)} components {components}" if components else "no components axis"
            raise self._reject(data, f"shape {list(data.shape)} contradicts scan_start: {want}")
        if data.row >= rows or data.col0 + n > cols:
            raise self._reject(data, f"pixels row {data.row}, cols {data.col0}..{data.col0 + n - 1} "
                                     f"are outside the scan shape {list(self.start.shape)}")
        spectra = self._payload(data, buffers, "data message", "spectra contain")
        self.pixels_received += n
        if isinstance(self.retained, SpectraRetention):
            self.retained.keep(data.seq, data.row, data.col0, spectra)
        return spectra

    def accept_frame(self, msg: Frame, buffers: list[memoryview]) -> np.ndarray:
        """The image of a frame message as a zero-copy array; ProtocolError (and a recorded rejection)
        when it contradicts ``scan_start``."""
        self._check_seq(msg)
        if takes_of(self.start) != "frames":
            raise self._reject(msg, "this is a spectral scan (axis in scan_start): send data messages")
        if tuple(msg.shape) != tuple(self.start.shape):
            raise self._reject(msg, f"frame shape {list(msg.shape)} differs from scan_start's {list(self.start.shape)}")
        if self.start.frames is not None and msg.frame >= self.start.frames:
            raise self._reject(msg, f"frame {msg.frame} is beyond scan_start's frames={self.start.frames}")
        if msg.frame <= self.last_frame:
            raise self._reject(msg, f"frame {msg.frame} does not follow frame {self.last_frame}")
        image = self._payload(msg, buffers, "frame message", "frame contains", needs_range=True)
        self.last_frame = msg.frame
        self.pixels_received += image.size
        if isinstance(self.retained, FrameRetention):
            self.retained.keep(msg.seq, msg.frame, image)
        return image

    def _payload(self, msg: Data | Frame, buffers: list[memoryview], kind: str, contents: str, *,
                 needs_range: bool = False) -> np.ndarray:
        """The one buffer of a data or frame message as a zero-copy array, finite if float (and with
        ``needs_range`` not constant: an image must have some dynamic range); the seq counts as received.
        ``kind`` and ``contents`` name the message and its values in rejection reasons."""
        if len(buffers) != 1:
            raise self._reject(msg, f"{kind} must carry exactly 1 buffer, got {len(buffers)}")
        try:
            values = buffer_to_array(buffers[0], msg.dtype, msg.shape)
        except ValueError as exc:
            raise self._reject(msg, str(exc)) from None
        if values.dtype.kind == "f" and not all_finite(values):
            raise self._reject(msg, f"{contents} NaN or infinite values")
        if values.dtype == np.float64 and values.size and np.abs(values).max() > _FLOAT32_MAX:
            # the models compute in float32: these would become infinite there
            raise self._reject(msg, f"{contents} values beyond float32's range (±3.4e38)")
        if needs_range and values.size:
            lo, hi = float(values.min()), float(values.max())
            if not hi - lo > 1e-6 * max(abs(lo), abs(hi)):  # below float32 precision: nothing to normalise
                raise self._reject(msg, f"{contents} no usable dynamic range: every pixel is {lo:.6g} "
                                        f"(to 1 part in 10^6); an image recognizer needs contrast")
        self.received.add(msg.seq)
        return values

    def _check_seq(self, msg: Data | Frame) -> None:
        if msg.seq in self.received or msg.seq in self.rejected:
            # a repeat is reported but does not overwrite the first message's fate
            raise ProtocolError("data_rejected", f"seq {msg.seq} was already received",
                                scan_id=self.scan_id, seq=msg.seq)
        if self.n_messages is not None and msg.seq >= self.n_messages:
            raise self._reject(msg, f"seq {msg.seq} is beyond scan_end's n_messages={self.n_messages}")
        if msg.seq >= self.max_messages:
            raise self._reject(msg, f"seq {msg.seq} is beyond the {self.max_messages} messages this scan can have "
                                    f"(seqs count from 0, one message per line or frame)")

    def end(self, n_messages: int) -> list[int]:
        """``scan_end``: seqs at or beyond ``n_messages`` that arrived before it become rejected, whatever
        else happened to them (one fate per seq; the summary's reason says whether their results are in
        the maps or the frame was skipped by policy latest); returns them."""
        self.n_messages = n_messages
        beyond = [seq for start, stop in self.received.discard_from(n_messages) for seq in range(start, stop)]
        skipped = set(self.skipped) & set(beyond)
        if skipped:
            self.skipped = [seq for seq in self.skipped if seq not in skipped]
        for seq in beyond:
            self.rejected[seq] = f"seq {seq} is beyond scan_end's n_messages={n_messages}; " + (
                "it arrived before scan_end and was skipped (policy latest)" if seq in skipped
                else "it arrived before scan_end and its results are in the maps")
        return beyond

    def record_skipped(self, seq: int) -> bool:
        """A frame dropped by the newest-frame-wins policy before it was recognized; False when its seq is
        already rejected (beyond scan_end's n_messages): its fate stays rejected, its reason says so."""
        if seq in self.rejected:
            self.rejected[seq] = (f"seq {seq} is beyond scan_end's n_messages={self.n_messages}; it arrived before "
                                  "scan_end and was skipped (policy latest)")
            return False
        self.skipped.append(seq)
        return True

    def record_late(self, seq: int) -> None:
        """Data after the close: listed (the first LIST_LIMIT) and counted, never kept unbounded."""
        self.n_late += 1
        if len(self.late) < LIST_LIMIT:
            self.late.append(seq)

    def record_unreadable(self, seq: int, reason: str) -> None:
        """A data message that failed before the scan saw it (undecodable, oversized): rejected, not lost."""
        if seq not in self.received:
            self.rejected.setdefault(seq, reason)

    # ------------------------------------------------------------------ result side

    def store(self, item: WorkItem, outputs: dict[str, Any]) -> float:
        """Write one processor's results into its binding; returns the latency in ms."""
        item.binding.store(item, outputs)
        latency = (time.perf_counter() - item.t_received) * 1e3
        item.binding.record(item, latency)
        return latency

    # ------------------------------------------------------------------ closing

    def lost_ranges(self) -> tuple[list[tuple[int, int]], int]:
        """Seqs expected and neither accepted nor rejected, as ``[start, stop)`` runs: everything below
        ``n_messages``, or (timed out without scan_end) below the highest seq seen; and that expected count.
        O(what was received), never O(n_messages)."""
        rejected = SeqRanges()
        for seq in sorted(self.rejected):
            rejected.add(seq)
        if self.n_messages is not None:
            expected = self.n_messages
        else:
            expected = max(self.received.max(), rejected.max()) + 1
            expected = min(expected, MAX_SEQ)  # a rejected seq may be the largest one an Index allows
        return self.received.gaps(expected, also=rejected), expected

    def close(self, *, timed_out: bool = False, aborted: bool = False) -> ScanSummary:
        """The summary, once: ``timed_out`` (no scan_end in time) or ``aborted`` (the service stopped)."""
        rows, cols = self.start.shape
        lost_runs, expected = self.lost_ranges()
        if takes_of(self.start) == "frames":  # pixels of an imaging scan: frames x frame pixels
            rows, cols = min(expected, self.max_messages), rows * cols  # never more frames than it can have
        # the recognizers the scan started with; one attached by live training (a revision) reports its own count
        # in its summary entry: a movie's frames before the swap are not redone
        started = [b for b in self.bindings.values() if b.revision is None] or list(self.bindings.values())
        # frames beyond scan_end's count that were recognized before it came are rejected: not counted
        recognized = min(min((b.pixels_within(expected) for b in started), default=0), rows * cols)
        summaries = {}
        for name, b in self.bindings.items():
            b.processor.finish(b)
            summaries[name] = b.processor.summarize(b)
        complete = (not timed_out and not aborted and not lost_runs and not self.rejected and not self.skipped
                    and self.pixels_received == rows * cols == recognized)
        self.summary = ScanSummary(
            scan_id=self.scan_id,
            state="aborted" if aborted else "timed_out" if timed_out else ("complete" if complete else "incomplete"),
            pixels_expected=rows * cols,
            pixels_received=self.pixels_received,
            pixels_recognized=recognized,
            messages_sent=self.n_messages,
            messages_received=len(self.received) + len(self.rejected),
            lost=first_of(lost_runs, LIST_LIMIT),
            n_lost=count_of(lost_runs),
            lost_ranges=[list(r) for r in lost_runs],
            rejected=[Rejection(seq=s, reason=r) for s, r in sorted(self.rejected.items())],
            skipped=sorted(self.skipped),
            **latency_percentiles([v for b in self.bindings.values() for v in b.latencies_ms]),
            duration_s=time.perf_counter() - self.t_start,
            recognizers=summaries,
        )
        return self.summary

    def snapshot(self) -> tuple[list[ArraySpec], list[np.ndarray]]:
        """Current state of every processor, named ``<processor>/<array>`` (maps, ``filled``, extras)."""
        specs: list[ArraySpec] = []
        arrays: list[np.ndarray] = []
        for name, b in self.bindings.items():
            for spec, values in b.snapshot_arrays():
                specs.append(spec.model_copy(update={"name": f"{name}/{spec.name}"}))
                arrays.append(values)
        return specs, arrays
