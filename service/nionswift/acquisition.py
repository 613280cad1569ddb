"""The glue between Swift's acquisition and the ``Streamer``: lines of a spectrum image out, maps in.

Swift's acquisitions (the Acquisition panel, the Spectrum Imaging panel, ``grab_synchronized``) write
what they acquire through an ``Acquisition.DataChannel``: ``prepare(channel_info_map)`` once, on the main
thread, then ``update_data(channel, source_data, source_slice, dest_slice, data_metadata)`` for every
chunk, on the acquisition thread, where ``dest_slice`` is a flat range of elements of the whole
``[rows, cols, channels]`` spectrum image and ``data_metadata`` carries its calibrations and metadata.

Two ways in, both using the same ``SpectrumImageTee``:

* ``TeeDataChannel(inner, recognition, document_model)`` wraps any data channel, for scripts:
  ``scan_hardware_source.grab_synchronized(data_channel=TeeDataChannel(...), ...)``.
* ``arm(recognition)`` replaces ``nion.instrumentation.DataChannel.DataItemDataChannel`` (the class the
  Acquisition and Spectrum Imaging panels instantiate for each acquisition) by a subclass that tees;
  ``disarm()`` puts the original back. Each acquisition still writes its own data items unchanged.

The tee assembles complete scan lines (``LineAssembler``) and hands each to ``Streamer.line`` at once;
``MapWriter`` turns the maps that come back into data items (one per recognizer output and component:
class, confidence, probabilities, novelty, novel, parameters) that fill in, line by line, during the
scan (updated on Swift's main thread through ``document_model._call_soon``). Pixels not recognized yet
are NaN. Nothing here may raise into Swift's acquisition: a failure is reported once per scan and the
acquisition goes on.

Frames (HAADF imaging, protocol §3.5), two ways in:

* an acquisition of scan frames (the Acquisition panel's scan device, "Basic" or "Sequence" of N
  frames) goes through the same armed ``DataItemDataChannel``: the tee finds the scan's image channel
  (``[height, width]`` or a sequence ``[N, height, width]``, named ``frame_channel``, "HAADF" by default),
  cuts the flat chunks into completed frames (``LineAssembler`` with a frame as its "line") and streams
  them as one movie of ``frames=N`` (``policy`` "lossless");
* the live view (``start_playing``, the scan "Play" button): ``LiveFrameWatcher`` listens to the scan
  hardware source's public ``data_channel_updated_event`` and ``data_channel_stop_event`` (fired on its
  acquisition thread) and streams each frame whose ``DataChannelEventArgs.state`` is "complete" as a
  frame of one movie per play session (``policy`` "latest": the newest frame wins). A changed frame
  shape or pixel size starts a new movie. While an acquisition has claimed the hardware source (it
  streams its own frames, or a spectrum image) or the source records, the live view is not streamed.

``FrameMapWriter`` writes each ``frame_result``'s ``classes`` image into a data item per recognizer,
replaced frame by frame, and keeps the frame's atom and defect counts (and novelty) in its metadata.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from .streamer import EnergyAxis, ScanStats, Streamer

#: the scan channel whose frames stream (by its name in Swift)
FRAME_CHANNEL = "HAADF"
#: per-frame atom / defect counts kept in a frame map's metadata (the last ones)
MAX_FRAME_HISTORY = 1000

log = logging.getLogger("scanlens.nionswift")

#: the most components of one output shown as separate images (e.g. class probabilities, parameters)
MAX_COMPONENTS = 16

_TO_NM = {"nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "mm": 1e6, "pm": 1e-3, "Å": 0.1, "A": 0.1, "m": 1e9}


class LineAssembler:
    """Cuts the flat chunks of a ``[rows, cols, channels]`` spectrum image into whole lines.

    ``feed(start, values)``: ``values`` are the elements at flat positions ``start ...`` (Swift's
    ``dest_slice``); yields ``(row, line[cols, channels])`` for every line completed. A chunk that does
    not continue where the last one stopped abandons the partial line (counted in ``broken_lines``)."""

    def __init__(self, rows: int, cols: int, channels: int, dtype: np.dtype = np.dtype(np.float32)):
        self.rows, self.cols, self.channels = rows, cols, channels
        self.row_elements = cols * channels
        self._buffer = np.empty(self.row_elements, dtype=dtype)
        self._pos = 0  # next flat position expected
        self.lines_done = 0
        self.broken_lines = 0

    def feed(self, start: int, values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        values = np.asarray(values).reshape(-1)
        if start != self._pos:
            if self._pos % self.row_elements:
                self.broken_lines += 1
            self._pos = start
        i = 0
        n = values.size
        while i < n:
            row, offset = divmod(self._pos, self.row_elements)
            if row >= self.rows:
                return
            take = min(self.row_elements - offset, n - i)
            if offset == 0 and take == self.row_elements:
                line = values[i:i + take]  # a whole line in one piece: no copy into the buffer
            else:
                self._buffer[offset:offset + take] = values[i:i + take]
                line = self._buffer if offset + take == self.row_elements else None
            i += take
            self._pos += take
            if line is not None:
                self.lines_done += 1
                yield row, line.reshape(self.cols, self.channels)

    @property
    def complete(self) -> bool:
        return self._pos >= self.rows * self.row_elements


class _MainThreadWriter:
    """Collects updates on any thread and draws them on Swift's main thread, one ``_flush`` per burst:
    ``_schedule`` after each update (outside ``_lock``); ``_flush`` (main thread) clears ``_scheduled``."""

    def __init__(self, document_model: Any, call_soon: Callable[[Callable[[], None]], None], scan_id: str,
                 spatial_calibrations: list[Any] | None, title_base: str):
        self.document_model = document_model
        self.call_soon = call_soon
        self.scan_id = scan_id
        self.spatial_calibrations = spatial_calibrations
        self.title_base = title_base
        self._lock = threading.Lock()
        self.data_items: dict[Any, Any] = {}  # key -> the Swift data item (created on the main thread)
        self._scheduled = False

    def _schedule(self) -> None:
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.call_soon(self._flush)
        except Exception:  # noqa: BLE001 - a closed document: nothing to draw into
            log.exception("scanlens: cannot schedule the map update")

    def _flush(self) -> None:
        raise NotImplementedError

    def _show(self, key: Any, data: np.ndarray, calibrations: list[Any] | None, metadata: dict[str, Any],
              title: str) -> None:
        """Main thread: the data item of ``key`` shows ``data``; made, titled and added to the document the
        first time."""
        from nion.data import Calibration, DataAndMetadata
        from nion.swift.model import DataItem

        xdata = DataAndMetadata.new_data_and_metadata(data, intensity_calibration=Calibration.Calibration(),
                                                      dimensional_calibrations=calibrations,
                                                      metadata={"scanlens": metadata})
        item = self.data_items.get(key)
        if item is None:
            item = DataItem.new_data_item(xdata)
            item.title = f"{title} ({self.title_base})" if self.title_base else title
            self.document_model.append_data_item(item)
            self.data_items[key] = item
        else:
            item.set_xdata(xdata)


class MapWriter(_MainThreadWriter):
    """Data items of one scan's maps, filled in as maps arrive (any thread), drawn on the main thread.

    ``call_soon(fn)`` runs ``fn`` on Swift's main thread (``document_model._call_soon``)."""

    def __init__(self, document_model: Any, call_soon: Callable[[Callable[[], None]], None], scan_id: str,
                 shape: tuple[int, int], spatial_calibrations: list[Any] | None = None, title_base: str = ""):
        super().__init__(document_model, call_soon, scan_id, spatial_calibrations, title_base)
        self.shape = shape
        #: (recognizer, output, component index or None) -> [rows, cols] float32, NaN where not yet recognized;
        #: ``data_items`` has the same keys
        self.arrays: dict[tuple[str, str, int | None], np.ndarray] = {}
        self.labels: dict[tuple[str, str, int | None], str] = {}
        self._dirty: set[tuple[str, str, int | None]] = set()
        self.rows_filled: dict[str, np.ndarray] = {}  # recognizer -> bool [rows, cols]

    # ---- any thread

    def started(self, started: Any) -> None:
        rows, cols = self.shape
        with self._lock:
            for rec, specs in started.outputs.items():
                self.rows_filled[rec] = np.zeros((rows, cols), dtype=bool)
                for spec in specs:
                    if not spec.shape:
                        keys = [((rec, spec.name, None), spec.name)]
                    elif len(spec.shape) == 1 and spec.shape[0] <= MAX_COMPONENTS:
                        labels = spec.labels or [str(i) for i in range(spec.shape[0])]
                        keys = [((rec, spec.name, i), f"{spec.name} {labels[i]}") for i in range(spec.shape[0])]
                    else:
                        continue
                    for key, label in keys:
                        self.arrays[key] = np.full((rows, cols), np.nan, dtype=np.float32)
                        self.labels[key] = label
                        self._dirty.add(key)
        self._schedule()

    def maps(self, header: Any, arrays: Mapping[str, np.ndarray]) -> None:
        row, col0, n = header.row, header.col0, header.n_pixels
        with self._lock:
            for (rec, name, index), target in self.arrays.items():
                if rec != header.recognizer or name not in arrays:
                    continue
                values = np.asarray(arrays[name])
                target[row, col0:col0 + n] = values if index is None else values[:, index]
                self._dirty.add((rec, name, index))
            if header.recognizer in self.rows_filled:
                self.rows_filled[header.recognizer][row, col0:col0 + n] = True
        self._schedule()

    def filled_rows(self, recognizer: str) -> int:
        """How many leading rows of ``recognizer``'s maps are complete."""
        filled = self.rows_filled.get(recognizer)
        if filled is None:
            return 0
        full = filled.all(axis=1)
        return int(np.argmin(full)) if not full.all() else len(full)

    # ---- main thread

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
            dirty = {key: self.arrays[key].copy() for key in self._dirty}
            self._dirty.clear()
        for key, data in dirty.items():
            rec, name, _ = key
            self._show(key, data, self.spatial_calibrations,
                       {"scan_id": self.scan_id, "recognizer": rec, "output": name},
                       f"scanlens {rec} {self.labels[key]}")

    def data_item(self, recognizer: str, output: str, index: int | None = None) -> Any:
        return self.data_items.get((recognizer, output, index))


class FrameMapWriter(_MainThreadWriter):
    """The class images of a movie's frames, one data item per recognizer, replaced frame by frame (any
    thread in, Swift's main thread out). The data item's metadata ``scanlens`` holds the frame shown
    (``frame``, ``n_atoms``, ``n_defects``, ``novelty``, ``novel``, the class ``labels``) and ``history``:
    ``[frame, n_atoms, n_defects]`` of the frames so far (the last ``MAX_FRAME_HISTORY``). ``begin`` starts
    a new movie in the same data items (a live view's play sessions)."""

    def __init__(self, document_model: Any, call_soon: Callable[[Callable[[], None]], None], scan_id: str,
                 spatial_calibrations: list[Any] | None = None, title_base: str = ""):
        super().__init__(document_model, call_soon, scan_id, spatial_calibrations, title_base)
        self._pending: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}  # recognizer -> newest (classes, meta)
        self.history: dict[str, list[list[int]]] = {}  # ``data_items`` is keyed by recognizer
        self.frames_written: dict[str, int] = {}  # recognizer -> frames drawn into its data item
        self.frames_received: dict[str, int] = {}

    def begin(self, scan_id: str, spatial_calibrations: list[Any] | None = None) -> None:
        with self._lock:
            self.scan_id = scan_id
            self.spatial_calibrations = spatial_calibrations
            self.history.clear()

    # ---- any thread

    def frame(self, header: Any, arrays: Mapping[str, np.ndarray]) -> None:
        classes = arrays.get("classes")
        if classes is None:
            return
        spec = next((a for a in header.arrays if a.name == "classes"), None)
        with self._lock:
            if header.scan_id != self.scan_id:
                return
            history = self.history.setdefault(header.recognizer, [])
            history.append([int(header.frame), int(header.n_atoms), int(header.n_defects)])
            del history[:-MAX_FRAME_HISTORY]
            meta: dict[str, Any] = {"scan_id": header.scan_id, "recognizer": header.recognizer, "output": "classes",
                                    "frame": int(header.frame), "seq": int(header.seq),
                                    "n_atoms": int(header.n_atoms), "n_defects": int(header.n_defects),
                                    "history": [list(h) for h in history]}
            if spec is not None and spec.labels:
                meta["labels"] = list(spec.labels)
            if header.novelty is not None:
                meta["novelty"] = float(header.novelty)
            if header.novel is not None:
                meta["novel"] = bool(header.novel)
            self._pending[header.recognizer] = (np.array(classes, copy=True), meta)
            self.frames_received[header.recognizer] = self.frames_received.get(header.recognizer, 0) + 1
        self._schedule()

    # ---- main thread

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
            pending, self._pending = self._pending, {}
            calibrations = self.spatial_calibrations
        for rec, (classes, meta) in pending.items():
            cals = calibrations if calibrations is not None and len(calibrations) == classes.ndim else None
            self._show(rec, classes, cals, meta, f"scanlens {rec} classes")
            self.frames_written[rec] = self.frames_written.get(rec, 0) + 1

    def data_item(self, recognizer: str) -> Any:
        return self.data_items.get(recognizer)


class Recognition:
    """The plug-in's state in one Swift session: the service's endpoints, whether it is armed, the one
    ``Streamer``, the scans seen and their problems. ``listeners`` get ``(scan_id, message)`` per problem."""

    def __init__(self, ingest: str = "tcp://127.0.0.1:5555", publish: str = "tcp://127.0.0.1:5556",
                 control: str = "tcp://127.0.0.1:5557", *, modality: str = "eels",
                 recognizers: list[str] | None = None, **streamer_options: Any):
        self.ingest, self.publish, self.control = ingest, publish, control
        self.modality, self.recognizers = modality, recognizers
        self.streamer_options = streamer_options
        self.armed = False
        self._streamer: Streamer | None = None
        self._lock = threading.Lock()
        self.writers: dict[str, MapWriter] = {}
        self.frame_writers: dict[str, FrameMapWriter] = {}  # scan id of a movie -> its writer
        self.frame_channel = FRAME_CHANNEL
        self._claims: dict[str, set[int]] = {}  # hardware source id -> ids of the acquisitions that claim it
        self.watchers: list[LiveFrameWatcher] = []
        self.problems: list[tuple[str, str]] = []  # (scan_id, message): a scan acquired without recognition
        self.notices: list[tuple[str, str]] = []  # (scan_id, message): recognizers left out of a scan
        self._problem_scans: set[str] = set()
        self.listeners: list[Callable[[str, str], None]] = []
        self.scan_ids: list[str] = []

    def set_endpoints(self, ingest: str, publish: str, control: str) -> None:
        """New endpoints: the streamer is made anew for the next scan."""
        with self._lock:
            old, self._streamer = self._streamer, None
            self.ingest, self.publish, self.control = ingest, publish, control
        if old is not None:
            old.close()

    @property
    def streamer(self) -> Streamer:
        with self._lock:
            if self._streamer is None:
                self._streamer = Streamer(self.ingest, self.publish, self.control, modality=self.modality,
                                          recognizers=self.recognizers, on_maps=self._on_maps,
                                          on_problem=self.report, on_started=self._on_started,
                                          on_summary=self._on_summary, on_frame=self._on_frame,
                                          **self.streamer_options)
            return self._streamer

    def stats(self, scan_id: str) -> ScanStats:
        return self.streamer.stats(scan_id)

    def report(self, scan_id: str, message: str) -> None:
        """A scan's problem, told once per scan."""
        with self._lock:
            if scan_id in self._problem_scans:
                return
            self._problem_scans.add(scan_id)
            self.problems.append((scan_id, message))
        self._tell(scan_id, message)

    def _tell(self, scan_id: str, message: str) -> None:
        with self._lock:
            listeners = list(self.listeners)
        for fn in listeners:
            try:
                fn(scan_id, message)
            except Exception:  # noqa: BLE001
                log.exception("scanlens problem listener failed")

    def new_scan_id(self, swift_scan_id: str | None) -> str:
        base = (swift_scan_id or str(uuid.uuid4()))[:56]
        scan_id, n = base, 1
        while scan_id in self.scan_ids:
            n += 1
            scan_id = f"{base}-{n}"
        self.scan_ids.append(scan_id)
        return scan_id

    def close(self) -> None:
        for watcher in list(self.watchers):
            watcher.close()
        self.watchers.clear()
        with self._lock:
            streamer, self._streamer = self._streamer, None
        if streamer is not None:
            streamer.close()

    def _on_started(self, scan_id: str, started: Any) -> None:
        writer = self.writers.get(scan_id)
        if writer is not None:
            writer.started(started)
        if started.skipped:  # recognizers of the modality that cannot take this scan (protocol 1.1): a notice
            message = (f"scanlens: scan {scan_id} runs {', '.join(started.recognizers)}; not "
                       + "; not ".join(f"{name} ({why})" for name, why in started.skipped.items()) + ".")
            log.warning(message)
            self.notices.append((scan_id, message))
            self._tell(scan_id, message)

    def claim(self, hardware_source_id: str, owner: object) -> None:
        """An acquisition uses this hardware source: its live view does not stream meanwhile."""
        with self._lock:
            self._claims.setdefault(hardware_source_id, set()).add(id(owner))

    def release(self, owner: object) -> None:
        with self._lock:
            for owners in self._claims.values():
                owners.discard(id(owner))

    def claimed(self, hardware_source_id: str) -> bool:
        with self._lock:
            return bool(self._claims.get(hardware_source_id))

    def _on_frame(self, scan_id: str, header: Any, arrays: dict[str, np.ndarray]) -> None:
        writer = self.frame_writers.get(scan_id)
        if writer is not None:
            writer.frame(header, arrays)

    def _on_maps(self, scan_id: str, header: Any, arrays: dict[str, np.ndarray]) -> None:
        writer = self.writers.get(scan_id)
        if writer is not None:
            writer.maps(header, arrays)

    def _on_summary(self, scan_id: str, summary: Any) -> None:
        log.info("scanlens scan %s: %s, %d of %d pixels recognized", scan_id, summary.state,
                 summary.pixels_recognized, summary.pixels_expected)
        notes = []
        if summary.state != "complete":  # losses, refusals, a time-out: the operator is told
            notes.append(f"ended {summary.state}: {summary.n_lost} messages lost, {len(summary.rejected)} rejected, "
                         f"{len(summary.skipped)} skipped, {summary.pixels_recognized} of {summary.pixels_expected} "
                         "pixels recognized")
        for rec, s in summary.recognizers.items():
            if s.novel_fraction is not None and s.novel_fraction > 0.5:  # the service's mostly_foreign rule
                notes.append(f"{rec} flagged {s.novel_fraction:.0%} of it novel (unlike its training data): its maps "
                             "are not vouched for")
        if notes:
            message = f"scanlens: scan {scan_id} " + "; ".join(notes) + "."
            self.notices.append((scan_id, message))
            self._tell(scan_id, message)


def _is_spectrum_image(data_metadata: Any) -> bool:
    d = data_metadata.data_descriptor
    return (not d.is_sequence and d.collection_dimension_count == 2 and d.datum_dimension_count == 1
            and len(data_metadata.data_shape) == 3)


def _calibration(c: Any) -> tuple[float, float, str]:
    return float(c.offset or 0.0), float(c.scale or 1.0), str(c.units or "")


def _hardware_source_id(channel: Any) -> str | None:
    """The hardware source of an ``Acquisition.Channel`` (its first segment, e.g. ``usim_scan_device.0``)."""
    segments = getattr(channel, "segments", None)
    return str(segments[0]) if segments else None


def _is_frame_stream(data_metadata: Any) -> bool:
    """An image ``[height, width]`` or a sequence of them ``[N, height, width]`` (a scan's frames)."""
    d = data_metadata.data_descriptor
    return (d.collection_dimension_count == 0 and d.datum_dimension_count == 2
            and len(data_metadata.data_shape) == (3 if d.is_sequence else 2))


def _pixel_size_nm(calibration: Any) -> tuple[float | None, str]:
    """A spatial calibration's step in nm (or in its own units where they are not a length)."""
    _, scale, units = _calibration(calibration)
    factor = _TO_NM.get(units)
    if factor:
        return scale * factor, "nm"
    return (scale, units) if units else (None, "")


def _frame_meta(metadata: Mapping[str, Any] | None, hardware_source_id: str | None, channel_name: str | None
                ) -> dict[str, Any]:
    metadata = dict(metadata or {})
    scan_md = metadata.get("scan", {}) if isinstance(metadata.get("scan"), dict) else {}
    meta: dict[str, Any] = {"source": "nionswift"}
    if hardware_source_id:
        meta["scan_hardware_source_id"] = hardware_source_id
    if channel_name:
        meta["scan_channel"] = channel_name
    for key in ("fov_nm", "rotation_deg", "center_x_nm", "center_y_nm", "pixel_time_us"):
        if isinstance(scan_md.get(key), (int, float)):
            meta[f"scan_{key}"] = float(scan_md[key])
    return meta


class SpectrumImageTee:
    """One acquisition's side channel: finds the spectrum image among the acquisition's channels, opens a
    scan for it at its first chunk and streams its lines. Inert when not armed or there is none."""

    def __init__(self, recognition: Recognition, document_model: Any = None, title_base: str = "",
                 call_soon: Callable[[Callable[[], None]], None] | None = None,
                 channel_names: Mapping[Any, str] | None = None):
        self.recognition = recognition
        self.document_model = document_model
        self.title_base = title_base
        self.call_soon = call_soon or (getattr(document_model, "_call_soon", None) if document_model else None)
        self.channel_names = dict(channel_names or {})
        self.channel: Any = None
        self.frame_channel: Any = None  # the scan image channel streamed as a movie (when there is no SI)
        self.scan_id: str | None = None
        self.writer: MapWriter | None = None
        self.frame_writer: FrameMapWriter | None = None
        self._assembler: LineAssembler | None = None
        self._active = False
        self._broken = False
        self._token = object()  # what claims the hardware sources of this acquisition
        weakref.finalize(self, recognition.release, self._token)

    def prepare(self, channel_info_map: Mapping[Any, Any]) -> None:
        try:
            self._finish()
            self.recognition.release(self._token)
            self._active = self.recognition.armed
            self.channel = None
            self.frame_channel = None
            self.scan_id = None
            if self._active:
                for channel, info in channel_info_map.items():
                    if _is_spectrum_image(info.data_metadata):
                        self.channel = channel
                        break
                if self.channel is None:
                    self.frame_channel = self._find_frame_channel(channel_info_map)
                for channel in channel_info_map:  # its live view is not streamed while this acquisition runs
                    hsid = _hardware_source_id(channel)
                    if hsid:
                        self.recognition.claim(hsid, self._token)
        except Exception:  # noqa: BLE001 - never into Swift's acquisition
            log.exception("scanlens: preparing the acquisition side channel failed")
            self._active = False

    def _find_frame_channel(self, channel_info_map: Mapping[Any, Any]) -> Any:
        images = [c for c, info in channel_info_map.items() if _is_frame_stream(info.data_metadata)]
        wanted = (self.recognition.frame_channel or "").lower()
        named = [c for c in images if self.channel_names.get(c, "").lower() == wanted]
        if named:
            return named[0]
        if not self.channel_names and len(images) == 1:  # a script's data channel: no names to go by
            return images[0]
        return None

    def update(self, channel: Any, source_data: np.ndarray, source_slice: Any, dest_slice: slice,
               data_metadata: Any) -> None:
        if not self._active or self._broken or channel is None or channel not in (self.channel, self.frame_channel):
            return
        try:
            if self._assembler is None:
                if channel == self.frame_channel:
                    self._open_movie(channel, data_metadata)
                else:
                    self._open(data_metadata)
            assert self._assembler is not None
            streamer = self.recognition.streamer
            values = np.asarray(source_data[source_slice])
            if channel == self.frame_channel:
                for index, image in self._assembler.feed(int(dest_slice.start), values):
                    streamer.frame(index, image, self.scan_id)
            else:
                for row, line in self._assembler.feed(int(dest_slice.start), values):
                    streamer.line(row, line)
            if self._assembler.complete:
                self._finish()
                self.recognition.release(self._token)
        except Exception as exc:  # noqa: BLE001 - the acquisition goes on whatever happens here
            self._broken = True
            log.exception("scanlens: streaming a chunk failed")
            self.recognition.report(self.scan_id or "?", f"scanlens: the plug-in could not read this acquisition's "
                                                         f"spectrum image ({type(exc).__name__}: {exc}), so it is "
                                                         f"acquired without recognition.")

    def _open(self, data_metadata: Any) -> None:
        rows, cols, channels = (int(n) for n in data_metadata.data_shape)
        cals = list(data_metadata.dimensional_calibrations)
        e_offset, e_scale, e_units = _calibration(cals[2])
        y_offset, y_scale, y_units = _calibration(cals[0])
        _, x_scale, x_units = _calibration(cals[1])
        factor = _TO_NM.get(x_units)
        pixel_size, pixel_units = (x_scale * factor, "nm") if factor else (x_scale, x_units or "px")
        metadata = dict(data_metadata.metadata or {})
        scan_md = metadata.get("scan", {}) if isinstance(metadata.get("scan"), dict) else {}
        hw_md = metadata.get("hardware_source", {}) if isinstance(metadata.get("hardware_source"), dict) else {}
        scan_id = self.recognition.new_scan_id(str(scan_md["scan_id"]) if scan_md.get("scan_id") else None)
        meta = {"source": "nionswift"}
        for key in ("hardware_source_id", "signal_type", "exposure"):
            if isinstance(hw_md.get(key), (str, int, float)):
                meta[f"camera_{key}"] = hw_md[key]
        for key in ("fov_nm", "rotation_deg", "center_x_nm", "center_y_nm"):
            if isinstance(scan_md.get(key), (int, float)):
                meta[f"scan_{key}"] = float(scan_md[key])
        self.scan_id = scan_id
        if self.document_model is not None and self.call_soon is not None:
            self.writer = MapWriter(self.document_model, self.call_soon, scan_id, (rows, cols),
                                    cals[:2], self.title_base)
            self.recognition.writers[scan_id] = self.writer
        self._assembler = LineAssembler(rows, cols, channels)
        self.recognition.streamer.start_scan(scan_id, (rows, cols), EnergyAxis(e_offset, e_scale, e_units, channels),
                                             pixel_size, pixel_units=pixel_units, meta=meta)

    def _open_movie(self, channel: Any, data_metadata: Any) -> None:
        """A movie for this acquisition's frames: ``frames`` N of a sequence (1 for one image), lossless."""
        shape = tuple(int(n) for n in data_metadata.data_shape)
        is_sequence = data_metadata.data_descriptor.is_sequence
        count, height, width = shape if is_sequence else (1, *shape)
        cals = list(data_metadata.dimensional_calibrations or [])
        spatial = cals[-2:] if len(cals) >= 2 else None
        pixel_size, pixel_units = _pixel_size_nm(spatial[1]) if spatial else (None, "")
        hsid = _hardware_source_id(channel)
        name = self.channel_names.get(channel)
        metadata = dict(data_metadata.metadata or {})
        scan_md = metadata.get("scan", {}) if isinstance(metadata.get("scan"), dict) else {}
        scan_id = self.recognition.new_scan_id(str(scan_md["scan_id"]) if scan_md.get("scan_id") else None)
        self.scan_id = scan_id
        if self.document_model is not None and self.call_soon is not None:
            self.frame_writer = FrameMapWriter(self.document_model, self.call_soon, scan_id, spatial, self.title_base)
            self.recognition.frame_writers[scan_id] = self.frame_writer
        # a frame is the assembler's "line": count frames of height x width values
        self._assembler = LineAssembler(count, height, width)
        self.recognition.streamer.start_movie(scan_id, (height, width), pixel_size, frames=count, policy="lossless",
                                              pixel_units=pixel_units or "nm",
                                              meta={**_frame_meta(metadata, hsid, name), "frames": count})

    def _finish(self) -> None:
        if self._assembler is not None and self.scan_id is not None:
            self.recognition.streamer.end(self.scan_id)
        self._assembler = None


class LiveFrameWatcher:
    """Streams the completed frames of a scan hardware source's live view (``start_playing``), one movie per
    play session, ``policy`` "latest". Listens to the hardware source's public events: ``data_channel_updated_event``
    ``(DataChannelEventArgs, DataAndMetadata)`` (a frame is complete when the args' ``state`` is "complete")
    and ``data_channel_stop_event`` (the session ends); both fire on the source's acquisition thread, and
    the frame is copied there (Swift fills the same buffer with the next frame). ``close()`` stops listening."""

    def __init__(self, recognition: Recognition, hardware_source: Any, document_model: Any = None,
                 call_soon: Callable[[Callable[[], None]], None] | None = None, channel_name: str | None = None,
                 title_base: str = "Live"):
        self.recognition = recognition
        self.hardware_source = hardware_source
        self.hardware_source_id = str(hardware_source.hardware_source_id)
        self.document_model = document_model
        self.call_soon = call_soon or (getattr(document_model, "_call_soon", None) if document_model else None)
        self.channel_name = channel_name
        self.title_base = title_base
        self.scan_id: str | None = None
        self.scan_ids: list[str] = []  # the movies streamed, in order
        self.writer: FrameMapWriter | None = None  # the live view's class images, reused from movie to movie
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._channel_id: str | None = None
        self._index = 0
        self._last: tuple[Any, Any] | None = None
        self._broken = False
        #: this play session: None (not known yet), "live" (streamed), "excluded" (an acquisition's: not streamed)
        self._session: str | None = None
        self._listeners = [hardware_source.data_channel_updated_event.listen(self._updated),
                           hardware_source.data_channel_start_event.listen(self._started),
                           hardware_source.data_channel_stop_event.listen(self._stopped)]

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        self._end()

    # ---- the hardware source's acquisition thread

    def _wanted(self, args: Any) -> bool:
        name = (self.channel_name or self.recognition.frame_channel or "").lower()
        return (args.name or "").lower() == name

    def _updated(self, args: Any, xdata: Any) -> None:
        if args.state != "complete" or not self._wanted(args):
            return
        try:
            with self._lock:
                self._frame(args, xdata)
        except Exception as exc:  # noqa: BLE001 - never into Swift's acquisition
            log.exception("scanlens: streaming a live frame failed")
            if not self._broken:
                self._broken = True
                self.recognition.report(self.scan_id or "?", f"scanlens: the plug-in could not read the live view of "
                                                             f"{self.hardware_source_id} ({type(exc).__name__}: {exc}), "
                                                             f"so it is not recognized.")

    def _excluded(self) -> bool:
        """Not to stream now: not armed, the source records, or an acquisition claims it."""
        r = self.recognition
        return (not r.armed or bool(getattr(self.hardware_source, "is_recording", False))
                or r.claimed(self.hardware_source_id))

    def _frame(self, args: Any, xdata: Any) -> None:
        r = self.recognition
        if self._session is None:  # armed during a session, or its start not seen: decide at its first frame
            self._session = "excluded" if self._excluded() else "live"
        if self._session == "excluded" or self._excluded():
            # a session that an acquisition started (a scan sequence plays the scan) stays out to its end,
            # also for the frames that complete after the acquisition let go
            self._session = "excluded"
            self._end_locked()
            return
        data = xdata.data
        if data is None or data.ndim != 2:
            return
        metadata = dict(xdata.metadata or {})
        scan_md = metadata.get("scan", {}) if isinstance(metadata.get("scan"), dict) else {}
        seen = (scan_md.get("scan_id"), xdata.timestamp)
        if seen == self._last:  # the same frame told twice
            return
        self._last = seen
        cals = list(xdata.dimensional_calibrations or [])
        pixel_size, units = _pixel_size_nm(cals[1]) if len(cals) == 2 else (None, "")
        key = (tuple(data.shape), pixel_size, units)
        if self.scan_id is None or key != self._key:
            self._end_locked()
            busy = r.streamer.current_scan_id
            if busy is not None:  # an acquisition's scan or movie is being streamed: it goes first
                return
            self._open(args, xdata, cals, pixel_size, units, metadata)
            self._key = key
        r.streamer.frame(self._index, data, self.scan_id)
        self._index += 1

    def _open(self, args: Any, xdata: Any, cals: list[Any], pixel_size: float | None, units: str,
              metadata: dict[str, Any]) -> None:
        r = self.recognition
        self._broken = False
        self._channel_id = args.channel_id
        self._index = 0
        scan_id = r.new_scan_id(f"live-{self.hardware_source_id}-{uuid.uuid4().hex[:8]}")
        self.scan_id = scan_id
        self.scan_ids.append(scan_id)
        if self.document_model is not None and self.call_soon is not None:
            if self.writer is None:
                self.writer = FrameMapWriter(self.document_model, self.call_soon, scan_id, cals, self.title_base)
            else:
                self.writer.begin(scan_id, cals)
            r.frame_writers[scan_id] = self.writer
        r.streamer.start_movie(scan_id, tuple(xdata.data.shape), pixel_size, policy="latest",
                               pixel_units=units or "nm", meta={**_frame_meta(metadata, self.hardware_source_id,
                                                                              args.name), "live": True})

    def _started(self, args: Any) -> None:
        if self._wanted(args):
            with self._lock:
                self._end_locked()
                self._session = None if not self.recognition.armed else ("excluded" if self._excluded() else "live")

    def _stopped(self, args: Any) -> None:
        if not self._wanted(args):
            return
        with self._lock:
            self._end_locked()
            self._session = None

    def _end(self) -> None:
        with self._lock:
            self._end_locked()

    def _end_locked(self) -> None:
        if self.scan_id is not None:
            try:
                self.recognition.streamer.end(self.scan_id)
            except Exception:  # noqa: BLE001
                log.exception("scanlens: ending the live movie failed")
        self.scan_id = None
        self._key = None


class _TeeMixin:
    _scanlens_tee: SpectrumImageTee


def make_tee_data_channel_class(base: type) -> type:
    """A subclass of the data channel class ``base`` that also streams to scanlens (see ``arm``)."""

    class ScanlensTeeDataChannel(base):  # type: ignore[misc, valid-type]
        def __init__(self, document_model: Any, title_base: str, channel_names: Mapping[Any, str],
                     *args: Any, **kwargs: Any) -> None:
            super().__init__(document_model, title_base, channel_names, *args, **kwargs)
            self._scanlens_tee = SpectrumImageTee(_armed_recognition or Recognition(), document_model, title_base,
                                                  channel_names=channel_names)

        def prepare(self, channel_info_map: Mapping[Any, Any]) -> None:
            super().prepare(channel_info_map)
            self._scanlens_tee.prepare(channel_info_map)

        def update_data(self, channel: Any, source_data: np.ndarray, source_slice: Any, dest_slice: slice,
                        data_metadata: Any) -> None:
            super().update_data(channel, source_data, source_slice, dest_slice, data_metadata)
            self._scanlens_tee.update(channel, source_data, source_slice, dest_slice, data_metadata)

    ScanlensTeeDataChannel.__qualname__ = f"Scanlens{base.__name__}"
    return ScanlensTeeDataChannel


def TeeDataChannel(inner: Any, recognition: Recognition, document_model: Any = None, title_base: str = "") -> Any:
    """Wrap any ``Acquisition.DataChannel`` ``inner`` so that its spectrum image also streams to scanlens
    (for scripts: ``grab_synchronized(data_channel=TeeDataChannel(...))``). Made here so that this module
    imports without Swift."""
    from nion.instrumentation import Acquisition

    class _Tee(Acquisition.DataChannel):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.tee = SpectrumImageTee(recognition, document_model, title_base)

        def prepare(self, channel_info_map: Mapping[Any, Any]) -> None:
            inner.prepare(channel_info_map)
            self.tee.prepare(channel_info_map)

        def update_data(self, channel: Any, source_data: np.ndarray, source_slice: Any, dest_slice: slice,
                        data_metadata: Any) -> None:
            inner.update_data(channel, source_data, source_slice, dest_slice, data_metadata)
            self.tee.update(channel, source_data, source_slice, dest_slice, data_metadata)

        def get_data(self, channel: Any) -> Any:
            return inner.get_data(channel)

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    return _Tee()


_armed_recognition: Recognition | None = None
_original_class: type | None = None


def arm(recognition: Recognition, document_model: Any = None, *, live: bool = True) -> None:
    """From now on every acquisition that Swift's panels start through ``DataItemDataChannel`` also streams
    its spectrum image, or its scan frames, to scanlens (each acquisition checks ``recognition.armed`` when it
    starts). With ``document_model`` (and ``live``), the live view of every scan hardware source that Swift
    knows (``HardwareSourceManager``, ``features["is_scanning"]``) streams too, its class images in that
    document (``watch_live``)."""
    global _armed_recognition, _original_class
    from nion.instrumentation import DataChannel

    if _original_class is None:
        _original_class = DataChannel.DataItemDataChannel
        DataChannel.DataItemDataChannel = make_tee_data_channel_class(_original_class)
    _armed_recognition = recognition
    recognition.armed = True
    if document_model is not None and live:
        from nion.instrumentation import HardwareSource

        for hardware_source in HardwareSource.HardwareSourceManager().hardware_sources:
            if hardware_source.features.get("is_scanning"):
                watch_live(recognition, hardware_source, document_model)


def watch_live(recognition: Recognition, hardware_source: Any, document_model: Any = None,
               channel_name: str | None = None) -> LiveFrameWatcher:
    """Stream the live view of ``hardware_source`` (a scan device) while ``recognition`` is armed; once per
    hardware source (the watcher already there is returned). ``Recognition.close`` and ``disarm`` stop it."""
    for watcher in recognition.watchers:
        if watcher.hardware_source is hardware_source:
            return watcher
    watcher = LiveFrameWatcher(recognition, hardware_source, document_model, channel_name=channel_name)
    recognition.watchers.append(watcher)
    return watcher


def disarm() -> None:
    """Acquisitions started from now on no longer stream (Swift's own class is put back)."""
    global _armed_recognition, _original_class
    if _armed_recognition is not None:
        _armed_recognition.armed = False
        for watcher in list(_armed_recognition.watchers):
            watcher.close()
        _armed_recognition.watchers.clear()
    _armed_recognition = None
    if _original_class is not None:
        from nion.instrumentation import DataChannel

        DataChannel.DataItemDataChannel = _original_class
        _original_class = None
