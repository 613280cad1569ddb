"""The Swift-independent core of the plug-in: hand spectrum-image lines to scanlens without ever blocking.

    streamer = Streamer(ingest, publish, control, on_maps=..., on_problem=...)
    scan_id = streamer.start_scan("si-1", (rows, cols), EnergyAxis(offset, scale, "eV", channels), pixel_size_nm)
    streamer.line(row, spectra)          # [cols, channels], from the acquisition thread
    streamer.end()
    movie_id = streamer.start_movie("live-1", (height, width), pixel_size_nm, frames=None, policy="latest")
    streamer.frame(index, image)         # [height, width], one completed frame, from the acquisition thread
    streamer.end()
    streamer.close()

A ``Streamer`` owns one background thread running its own asyncio loop, with a ``scanlens.client``
``Instrument`` (ingest), ``ScanWatch`` (the scan's fate, the service's heartbeat) and ``Subscriber`` (the
maps) per scan. The calls above only copy the line and hand it to that loop (``call_soon_threadsafe``):
they never wait for the network. The hand-off is bounded (``max_pending_bytes``); when the service is
absent, dies, refuses the scan or cannot keep up, ``on_problem`` is called once per scan with one
sentence and the scan's later lines are dropped here and counted (``stats(scan_id).lines_dropped``).
The acquisition itself never notices.

A movie (an imaging scan: frames of HAADF images, protocol §3.5) goes the same way, frame by frame, with
the same bounded hand-off and the same one problem per movie; its counters are the same fields
(``frames_queued``/``frames_sent``/``frames_dropped`` are ``lines_*`` under the movie's name).

Callbacks run on the streamer's thread: ``on_started(scan_id, ScanStarted)``, ``on_maps(scan_id, Maps,
{name: ndarray})``, ``on_frame(scan_id, FrameResult, {name: ndarray})`` (movies),
``on_summary(scan_id, ScanSummary)``, ``on_problem(scan_id, message)``. They must
be quick and must not raise (an exception is logged and ignored).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

import numpy as np
import zmq
import zmq.asyncio

from scanlens.client import Control, Instrument, ScanRejected, ScanWatch, ServiceStopped, ServiceUnreachable, Subscriber
from scanlens.protocol import topics
from scanlens.protocol.messages import Axis, FrameResult, Maps, PixelSize, ScanStarted, ScanSummary

log = logging.getLogger("scanlens.nionswift")

_WIRE_DTYPES = {np.dtype(n) for n in ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")}


class EnergyAxis(NamedTuple):
    """The energy calibration of a spectrum: channel ``k`` is at ``offset + k * scale`` ``units``."""

    offset: float
    scale: float
    units: str
    size: int


class CalibrationError(ValueError):
    """A calibration that the protocol cannot carry (the message says which and why)."""


def to_axis(energy_axis: EnergyAxis | tuple[float, float, str | None, int]) -> Axis:
    """The protocol ``Axis`` of an energy calibration. ``units`` None or "" is an uncalibrated axis (the
    service then refuses recognizers that need eV); CalibrationError for what ``Axis`` cannot hold: a
    scale that is not > 0 (a reversed or collapsed axis), non-finite numbers, units over 16 characters."""
    offset, scale, units, size = energy_axis
    units = (units or "").strip()
    offset, scale = float(offset), float(scale)
    if not (math.isfinite(offset) and math.isfinite(scale)):
        raise CalibrationError(f"the energy calibration is not finite (offset {offset}, scale {scale})")
    if not scale > 0:
        raise CalibrationError(f"the energy axis must increase (scale {scale:g} {units} per channel)")
    if len(units) > 16:
        raise CalibrationError(f"the energy units {units!r} are longer than 16 characters")
    if int(size) < 1:
        raise CalibrationError(f"the spectrum has {size} channels")
    return Axis(size=int(size), offset=offset, scale=scale, units=units)


def to_pixel_size(pixel_size: float | None, units: str = "nm") -> PixelSize | None:
    """The scan step as a protocol ``PixelSize`` (None when unknown, not > 0 or not finite)."""
    if pixel_size is None or not math.isfinite(pixel_size) or not pixel_size > 0:
        return None
    return PixelSize(size=float(pixel_size), units=(units or "nm")[:16])


@dataclasses.dataclass
class ScanStats:
    """What became of one scan's lines (read it from any thread)."""

    scan_id: str
    shape: tuple[int, int]
    lines_queued: int = 0      # handed to the streamer's loop
    lines_sent: int = 0        # written to the ingest socket
    lines_dropped: int = 0     # dropped here: service absent or gone, scan refused, or backlog full
    ended: bool = False
    problem: str | None = None
    started: ScanStarted | None = None
    summary: ScanSummary | None = None
    maps_received: int = 0
    frame_results: int = 0     # frame_result messages received (movies; one per frame and image recognizer)
    movie: bool = False
    done: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    @property
    def failed(self) -> bool:
        return self.problem is not None

    # a movie's messages are frames: the same counters under their names
    @property
    def frames_queued(self) -> int:
        return self.lines_queued

    @property
    def frames_sent(self) -> int:
        return self.lines_sent

    @property
    def frames_dropped(self) -> int:
        return self.lines_dropped


class _Scan:
    """A scan's state shared between the caller's thread and the loop."""

    def __init__(self, stats: ScanStats, axis: Axis | None, scan_step: PixelSize | None, meta: dict[str, Any],
                 movie: _Movie | None = None):
        self.stats = stats
        self.axis = axis
        self.scan_step = scan_step
        self.meta = meta
        self.movie = movie
        self.modality: str | None = None
        self.frames_done: dict[str, int] = {}  # movies: recognizer -> frame results arrived
        self.pending_bytes = 0
        self.queue: asyncio.Queue[tuple[int, np.ndarray] | None] | None = None  # on the loop
        self.pixels: dict[str, int] = {}  # recognizer -> pixels whose maps arrived
        self.recognizers: list[str] | None = None


@dataclasses.dataclass
class _Movie:
    """What makes a scan a movie (``scan_start`` with ``pixel_size`` instead of ``axis``)."""

    pixel_size: PixelSize
    frames: int | None = None
    policy: str = "lossless"
    frame_interval_s: float | None = None


class Streamer:
    """See the module notes. ``ingest``/``publish``/``control``: the service's endpoints.
    ``modality``: what the scans are (``eels``); ``recognizers``: by name, or None for the modality's.
    Timeouts: ``ready_timeout`` for the first heartbeat (is a service there), ``started_timeout`` for the
    answer to ``scan_start``, ``heartbeat_timeout`` of silence that means the service died,
    ``summary_timeout`` after the scan's end."""

    def __init__(self, ingest: str, publish: str, control: str | None = None, *, modality: str = "eels",
                 recognizers: list[str] | None = None,
                 on_maps: Callable[[str, Maps, dict[str, np.ndarray]], None] | None = None,
                 on_problem: Callable[[str, str], None] | None = None,
                 on_started: Callable[[str, ScanStarted], None] | None = None,
                 on_summary: Callable[[str, ScanSummary], None] | None = None,
                 on_frame: Callable[[str, FrameResult, dict[str, np.ndarray]], None] | None = None,
                 movie_modality: str = "haadf",
                 max_pending_bytes: int = 256 << 20, ready_timeout: float = 3.0, started_timeout: float = 10.0,
                 heartbeat_timeout: float = 5.0, summary_timeout: float = 60.0):
        self.ingest, self.publish, self.control = ingest, publish, control
        self.modality, self.recognizers = modality, recognizers
        self.on_maps, self.on_problem, self.on_started, self.on_summary = on_maps, on_problem, on_started, on_summary
        self.on_frame, self.movie_modality = on_frame, movie_modality
        self.max_pending_bytes = max_pending_bytes
        self.ready_timeout, self.started_timeout = ready_timeout, started_timeout
        self.heartbeat_timeout, self.summary_timeout = heartbeat_timeout, summary_timeout
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self._scans: dict[str, _Scan] = {}
        self._current: _Scan | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ctx: zmq.asyncio.Context | None = None
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="scanlens-streamer", daemon=True)
        self._thread.start()
        ready.wait()

    # ------------------------------------------------------------------ the caller's side (any thread)

    def start_scan(self, scan_id: str, shape: tuple[int, int],
                   energy_axis: EnergyAxis | tuple[float, float, str | None, int],
                   pixel_size_nm: float | None = None, *, pixel_units: str = "nm",
                   meta: dict[str, Any] | None = None, recognizers: list[str] | None = None) -> str:
        """Open a scan of ``shape`` (rows, cols); ends an unfinished previous one. Returns ``scan_id``.
        ``recognizers``: by name for this scan (default: the streamer's).
        A calibration the protocol cannot carry is reported (``on_problem``) and the scan is not sent."""
        if self._current is not None and not self._current.stats.ended:
            self.end()
        rows, cols = int(shape[0]), int(shape[1])
        stats = ScanStats(scan_id, (rows, cols))
        try:
            axis = to_axis(energy_axis)
        except (CalibrationError, ValueError) as exc:
            scan = _Scan(stats, Axis(size=1, offset=0.0, scale=1.0, units=""), None, {})
            with self._lock:
                self._scans[scan_id] = scan
                self._current = scan
            self._fail(scan, f"scanlens: scan {scan_id} is not sent for recognition: {exc}.")
            return scan_id
        scan = _Scan(stats, axis, to_pixel_size(pixel_size_nm, pixel_units), dict(meta or {}))
        scan.recognizers = recognizers if recognizers is not None else self.recognizers
        return self._begin(scan)

    def line(self, row: int, spectra: np.ndarray) -> bool:
        """Hand over one scan line ``[cols, channels]`` of the current scan (copied). Never blocks; False
        when the line was dropped (no scan, scan failed, backlog full)."""
        scan = self._current
        if scan is None or scan.stats.ended or scan.movie is not None:
            return False
        return self._hand_over(scan, int(row), spectra, "lines")

    def _hand_over(self, scan: _Scan, index: int, values: np.ndarray, what: str) -> bool:
        """Copy ``values`` and queue them for the loop, within the bounded backlog (any thread)."""
        stats = scan.stats
        if stats.failed:
            self._dropped(scan)
            return False
        values = np.asarray(values)
        if values.dtype not in _WIRE_DTYPES:
            values = values.astype(np.float32)
        if scan.movie is not None and values.shape != stats.shape:
            self._dropped(scan)
            self._fail(scan, f"scanlens: a frame of movie {stats.scan_id} is {values.shape[0] if values.ndim else 0} x "
                             f"{values.shape[1] if values.ndim > 1 else 0} pixels, not the movie's "
                             f"{stats.shape[0]} x {stats.shape[1]}, so its later frames are not recognized.")
            return False
        data = np.array(values, order="C", copy=True)
        with self._lock:
            if self._pending_bytes + data.nbytes > self.max_pending_bytes:
                full = True
            else:
                full = False
                self._pending_bytes += data.nbytes
                scan.pending_bytes += data.nbytes
        if full:
            self._dropped(scan)
            kind = "movie" if scan.movie is not None else "scan"
            self._fail(scan, f"scanlens: the service cannot keep up with {kind} {stats.scan_id} (over "
                             f"{self.max_pending_bytes >> 20} MiB of {what} waiting), so its later {what} are not "
                             f"recognized.")
            return False
        with self._lock:
            stats.lines_queued += 1
        self._loop.call_soon_threadsafe(self._put, scan, (index, data))
        return True

    def start_movie(self, scan_id: str, shape: tuple[int, int], pixel_size_nm: float | None,
                    frame_interval_s: float | None = None, *, frames: int | None = None, policy: str = "lossless",
                    pixel_units: str = "nm", modality: str | None = None, meta: dict[str, Any] | None = None,
                    recognizers: list[str] | None = None) -> str:
        """Open a movie of frames ``shape`` (height, width) at ``pixel_size_nm`` (``pixel_units`` per frame
        pixel); ends an unfinished previous scan or movie. Returns ``scan_id``. ``frames``: how many will come
        (None: open-ended, e.g. a live view); ``policy``: "lossless" (every frame recognized; the service backs
        off) or "latest" (newest frame wins, a live view); ``frame_interval_s``: seconds from one frame to the
        next (D in nm²/s); ``modality``: default the streamer's ``movie_modality`` (haadf); ``recognizers``:
        by name (default: the streamer's). A frame without a pixel size, or a shape the protocol cannot carry,
        is reported (``on_problem``) and the movie is not sent."""
        if self._current is not None and not self._current.stats.ended:
            self.end()
        height, width = int(shape[0]), int(shape[1])
        stats = ScanStats(scan_id, (height, width), movie=True)
        pixel_size = to_pixel_size(pixel_size_nm, pixel_units)
        problem = None
        if pixel_size is None:
            problem = f"the frames have no spatial calibration (pixel size {pixel_size_nm!r} {pixel_units})"
        elif not (1 <= height <= 65536 and 1 <= width <= 65536):
            problem = f"a frame of {height} x {width} pixels cannot be sent"
        elif policy not in ("lossless", "latest"):
            problem = f"unknown frame policy {policy!r}"
        elif frame_interval_s is not None and not (math.isfinite(frame_interval_s) and frame_interval_s > 0):
            frame_interval_s = None
        if problem is not None or pixel_size is None:
            scan = _Scan(stats, None, None, {})
            with self._lock:
                self._scans[scan_id] = scan
                self._current = scan
            self._fail(scan, f"scanlens: movie {scan_id} is not sent for recognition: {problem}.")
            return scan_id
        movie = _Movie(pixel_size, int(frames) if frames else None, policy,
                       float(frame_interval_s) if frame_interval_s is not None else None)
        scan = _Scan(stats, None, None, dict(meta or {}), movie)
        scan.modality = modality or self.movie_modality
        scan.recognizers = recognizers if recognizers is not None else self.recognizers
        return self._begin(scan)

    def _begin(self, scan: _Scan) -> str:
        """Make ``scan`` the current one and start it on the loop; its id."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the streamer is closed")
            self._scans[scan.stats.scan_id] = scan
            self._current = scan
        self._loop.call_soon_threadsafe(self._open, scan)
        return scan.stats.scan_id

    def frame(self, index: int, image: np.ndarray, scan_id: str | None = None) -> bool:
        """Hand over one completed frame ``[height, width]`` of the current movie (copied). Never blocks;
        False when it was dropped (no movie, movie failed or ended, backlog full, wrong shape). With
        ``scan_id``, only if that is the current movie."""
        scan = self._current
        if scan is None or scan.stats.ended or scan.movie is None:
            return False
        if scan_id is not None and scan.stats.scan_id != scan_id:
            return False
        return self._hand_over(scan, int(index), image, "frames")

    def end(self, scan_id: str | None = None) -> ScanStats | None:
        """Close the current scan (its ``scan_end`` goes out after its lines); returns its stats. With
        ``scan_id``, only if that is the current scan."""
        scan = self._current
        if scan is not None and scan_id is not None and scan.stats.scan_id != scan_id:
            return None
        if scan is None or scan.stats.ended:
            return scan.stats if scan else None
        scan.stats.ended = True
        if not self._closed:
            self._loop.call_soon_threadsafe(self._put, scan, None)
        return scan.stats

    @property
    def current_scan_id(self) -> str | None:
        """The scan or movie open now (started, not ended), or None."""
        scan = self._current
        return scan.stats.scan_id if scan is not None and not scan.stats.ended else None

    def stats(self, scan_id: str) -> ScanStats:
        return self._scans[scan_id].stats

    def wait(self, scan_id: str, timeout: float | None = None) -> ScanStats:
        """Wait until the scan is over here (summary received, or failed); its stats."""
        stats = self._scans[scan_id].stats
        stats.done.wait(timeout)
        return stats

    def submit(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> concurrent.futures.Future[Any]:
        """Run ``fn()`` on the streamer's loop; a future to poll or to add a done-callback to."""
        return asyncio.run_coroutine_threadsafe(fn(), self._loop)

    def models(self) -> concurrent.futures.Future[dict[str, Any]]:
        """The service's recognizers (the ``models`` control reply), as a future (never blocks)."""
        async def ask() -> dict[str, Any]:
            if not self.control:
                raise RuntimeError("no control endpoint given")
            ctl = Control(self.control, ctx=self._ctx)
            try:
                return await ctl.models()
            finally:
                ctl.close()
        return self.submit(ask)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: unfinished scans are abandoned, every socket is closed, the thread ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("scanlens streamer did not shut down within %s s", timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop's side

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._ctx = zmq.asyncio.Context()
        ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        assert self._ctx is not None
        self._ctx.destroy(linger=0)  # closes what a cancelled scan's clean-up did not reach, then terms

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open(self, scan: _Scan) -> None:
        scan.queue = asyncio.Queue()
        if self._closed:
            return
        self._spawn(self._run(scan))

    def _put(self, scan: _Scan, item: tuple[int, np.ndarray] | None) -> None:
        if scan.queue is None:  # a scan refused before it reached the loop (bad calibration)
            if item is not None:
                self._release(scan, item[1].nbytes)
                self._dropped(scan)
            return
        if scan.stats.failed and item is not None:
            self._release(scan, item[1].nbytes)
            self._dropped(scan)
            return
        scan.queue.put_nowait(item)

    def _dropped(self, scan: _Scan) -> None:
        with self._lock:  # counted from the caller's thread and the loop's
            scan.stats.lines_dropped += 1

    def _release(self, scan: _Scan, nbytes: int) -> None:
        with self._lock:
            self._pending_bytes -= nbytes
            scan.pending_bytes -= nbytes

    def _fail(self, scan: _Scan, message: str) -> None:
        """Report the scan's one problem (once) and drop what it still has queued."""
        with self._lock:
            if scan.stats.problem is not None:
                return
            scan.stats.problem = message
        log.warning(message)
        self._call(self.on_problem, scan.stats.scan_id, message)
        scan.stats.done.set()

    def _drain(self, scan: _Scan) -> None:
        """Drop (and count) the lines of a failed scan still waiting on the loop."""
        if scan.queue is None:
            return
        while not scan.queue.empty():
            item = scan.queue.get_nowait()
            if item is not None:
                self._release(scan, item[1].nbytes)
                self._dropped(scan)

    @staticmethod
    def _call(fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a callback must not stop the streaming
            log.exception("scanlens plug-in callback %r failed", fn)

    async def _run(self, scan: _Scan) -> None:
        stats = scan.stats
        sid = stats.scan_id
        ctx = self._ctx
        watch: ScanWatch | None = None
        maps_sub: Subscriber | None = None
        inst: Instrument | None = None
        pump: asyncio.Task[None] | None = None
        clean = False
        try:
            watch = ScanWatch(self.publish, sid, heartbeat_timeout=self.heartbeat_timeout, ctx=ctx)
            results = topics.FRAME if scan.movie is not None else topics.MAPS
            maps_sub = Subscriber(self.publish, topics_=[topics.scan_topic(sid, results)], ctx=ctx)
            try:
                await watch.wait_ready(self.ready_timeout)
                await maps_sub.wait_ready(self.ready_timeout)
            except (ServiceUnreachable, TimeoutError):
                raise _Problem(f"scanlens: no service answers at {self.publish} (no heartbeat within "
                               f"{self.ready_timeout:g} s), so scan {sid} is acquired without recognition.") from None
            pump = self._loop.create_task(self._pump_maps(scan, maps_sub))
            inst = Instrument(self.ingest, ctx=ctx, linger_s=0)
            if scan.movie is not None:
                m = scan.movie
                stream = inst.movie(sid, scan.modality or self.movie_modality, stats.shape, m.pixel_size,
                                    frames=m.frames, policy=m.policy, recognizers=scan.recognizers, meta=scan.meta,
                                    frame_interval_s=m.frame_interval_s)
            else:
                assert scan.axis is not None
                stream = inst.scan(sid, self.modality, stats.shape, scan.axis, scan_step=scan.scan_step,
                                   recognizers=scan.recognizers, meta=scan.meta)
            await watch.guard(inst.send(stream.start))
            try:
                started = await watch.wait_started(self.started_timeout)
            except ScanRejected as exc:
                raise _Problem(f"scanlens: the service refused scan {sid} ({exc.reason}), so it is acquired "
                               f"without recognition.") from None
            except ServiceUnreachable:
                raise _Problem(f"scanlens: the service did not answer the start of scan {sid} within "
                               f"{self.started_timeout:g} s (is {self.ingest} its ingest endpoint?), so the scan "
                               f"is acquired without recognition.") from None
            stats.started = started
            self._call(self.on_started, sid, started)
            await watch.guard(self._send_lines(scan, stream))
            try:
                async with asyncio.timeout(self.summary_timeout):
                    summary = await watch.wait_summary()
            except TimeoutError:
                raise _Problem(f"scanlens: no summary for scan {sid} within {self.summary_timeout:g} s of its "
                               f"end.") from None
            await self._settle_maps(scan, summary)
            stats.summary = summary
            self._call(self.on_summary, sid, summary)
            clean = True
        except _Problem as exc:
            self._fail(scan, str(exc))
        except ServiceStopped:
            self._fail(scan, f"scanlens: the service stopped during scan {sid} (no heartbeat for "
                             f"{self.heartbeat_timeout:g} s), so the rest of the scan is acquired without "
                             f"recognition.")
        except asyncio.CancelledError:
            self._fail(scan, f"scanlens: streaming of scan {sid} was stopped (the plug-in closed).")
            raise
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the acquisition goes on
            log.exception("scanlens streaming of scan %s failed", sid)
            self._fail(scan, f"scanlens: streaming scan {sid} failed ({type(exc).__name__}: {exc}), so the rest of "
                             f"the scan is acquired without recognition.")
        finally:
            if not clean:
                self._drain(scan)
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            if watch is not None:
                await watch.aclose()
            if maps_sub is not None:
                maps_sub.close()
            if inst is not None:
                inst.close(linger_s=0)
            stats.done.set()  # after the sockets are closed: wait() returns when the scan is over here

    async def _send_lines(self, scan: _Scan, stream: Any) -> None:
        assert scan.queue is not None
        while True:
            item = await scan.queue.get()
            if item is None:
                await stream.end()
                return
            row, data = item
            try:
                if scan.movie is not None:
                    await stream.send_frame(row, data)
                else:
                    await stream.send_line(row, data)
            finally:
                self._release(scan, data.nbytes)
            scan.stats.lines_sent += 1

    async def _pump_maps(self, scan: _Scan, sub: Subscriber) -> None:
        while True:
            msg = await sub.recv()
            h = msg.header
            if isinstance(h, Maps) and h.scan_id == scan.stats.scan_id:
                scan.stats.maps_received += 1
                scan.pixels[h.recognizer] = scan.pixels.get(h.recognizer, 0) + h.n_pixels
                self._call(self.on_maps, h.scan_id, h, msg.arrays)
            elif isinstance(h, FrameResult) and h.scan_id == scan.stats.scan_id:
                scan.stats.frame_results += 1
                scan.frames_done[h.recognizer] = scan.frames_done.get(h.recognizer, 0) + 1
                self._call(self.on_frame, h.scan_id, h, msg.arrays)

    async def _settle_maps(self, scan: _Scan, summary: ScanSummary, timeout: float = 3.0) -> None:
        """The maps come on another socket than the summary: give them a moment to catch up."""
        if scan.movie is not None:
            done = scan.frames_done
            want = {rec: s.frames_recognized or 0 for rec, s in summary.recognizers.items()}
        else:
            done = scan.pixels
            want = {rec: s.pixels_recognized for rec, s in summary.recognizers.items()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(done.get(rec, 0) < n for rec, n in want.items()):
            await asyncio.sleep(0.02)


class _Problem(Exception):
    """A scan's failure, with the one sentence to tell the operator."""
