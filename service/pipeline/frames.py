"""Image recognizers: a segmentation network applied frame by frame, then atoms, defects and tracks.

A frame is first rescaled to the pixel size the network was trained at (its card's input
``pixel_size``) — real microscopes do not use our simulator's pixel size — padded to a size the
network accepts, segmented, post-processed (``atoms.py``) and mapped back to the frame's own
pixels. Defects are linked from frame to frame by the scan's ``DefectTracker``; frames of a scan are
processed in order by one thread, so tracks see them in order.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..protocol.messages import ArraySpec, RecognizerSummary, ScanStart
from .atoms import PostProcess, postprocess
from .axis import AxisError, length_factor
from .processor import Binding, WorkItem
from .recognizer import ModelError, Recognizer
from .stats import latency_percentiles
from .tracking import DefectTracker

log = logging.getLogger(__name__)

MIN_ZOOM, MAX_ZOOM = 0.25, 4.0


def _cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class FrameState:
    """Per scan: the rescaling, the tracker, the order frames must reach it in, the latest result."""

    zoom: float  # model pixels per frame pixel
    tracker: DefectTracker
    pixel_size_nm: float | None
    frames_done: int = 0
    last: dict[str, np.ndarray] = field(default_factory=dict)
    last_frame: int | None = None
    order: collections.deque[int] = field(default_factory=collections.deque)  # seqs admitted, in order
    turn: threading.Condition = field(default_factory=threading.Condition)

    def admit(self, seq: int) -> None:
        with self.turn:
            self.order.append(seq)

    def forget(self, seqs: list[int]) -> None:
        """Frames that will never reach the tracker (skipped, failed): let the next ones through."""
        with self.turn:
            for seq in seqs:
                if seq in self.order:
                    self.order.remove(seq)
            self.turn.notify_all()

    def track_in_order(self, seq: int, frame: int, defects: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Track ids for a frame's defects and the running tracking statistics after it; waits until
        every earlier admitted frame has been tracked."""
        with self.turn:
            self.turn.wait_for(lambda: not self.order or self.order[0] == seq)
            try:
                ids = self.tracker.update(frame, defects[:, :2], defects[:, 2].astype(np.intp))
                return ids, self.tracker.summary(pixel_size_nm=self.pixel_size_nm)
            finally:
                if self.order and self.order[0] == seq:
                    self.order.popleft()
                self.turn.notify_all()


def recognize_image(segment: Callable[[np.ndarray], np.ndarray], pp: PostProcess, image: np.ndarray,
                    zoom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame through a segmentation network, in the frame's own pixels: zoom (order 1) by ``zoom``
    model pixels per frame pixel, ``segment`` (probabilities ``[C, h, w]``), post-process, scale back.

    Returns the class map (uint8, the frame's shape, nearest model pixel), atoms ``[n, 3]`` and defects
    ``[m, 4]`` with x, y in frame pixels. The service and the offline scoring
    (``models.stem_metrics.recognize_frame``) both run frames through here.
    """
    frame = np.asarray(image, dtype=np.float32)
    scaled = frame if abs(zoom - 1.0) < 1e-6 else ndimage.zoom(frame, zoom, order=1)
    class_map, atoms, defects = postprocess(segment(scaled), pp)
    sy = (scaled.shape[0] - 1) / max(frame.shape[0] - 1, 1)
    sx = (scaled.shape[1] - 1) / max(frame.shape[1] - 1, 1)
    atoms[:, 0] /= sx
    atoms[:, 1] /= sy
    defects[:, 0] /= sx
    defects[:, 1] /= sy
    rows = np.minimum(np.round(np.arange(frame.shape[0]) * sy).astype(np.intp), class_map.shape[0] - 1)
    cols = np.minimum(np.round(np.arange(frame.shape[1]) * sx).astype(np.intp), class_map.shape[1] - 1)
    return class_map[rows][:, cols], atoms, defects


class FrameRecognizer(Recognizer):
    """Two frames may be in flight at once — one in the network while the other is post-processed —
    but they reach the tracker (and so the subscribers) in the order they arrived. At most
    ``cores // intra-op threads`` frames are in the network at once (``_run_slots``): with one thread
    per run two frames run side by side on two cores; with two threads one run gets both cores, as in
    a bare ONNX Runtime loop, instead of two runs competing for them."""

    imaging = True
    max_parallel = 2

    def _setup(self, warm_up_batch: int) -> None:
        seg = [o for o in self.card.outputs if o.role == "segmentation"]
        if len(seg) != 1:
            raise ModelError(f"{self.path}: an image recognizer needs exactly one segmentation output")
        self.components = None
        self.seg_output = seg[0]
        self._output_names = [seg[0].name]
        try:
            self.pp = PostProcess.from_card(seg[0].labels, self.card.postprocess)
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{self.path}: invalid postprocess in the card: {exc}") from None
        self.pixel_size = self.card.input.pixel_size
        self.multiple = int(self.card.postprocess.get("size_multiple", 16))
        self.gate_nm = float(self.card.postprocess.get("track_gate_nm", 0.5))
        self._run_slots = threading.BoundedSemaphore(max(1, _cores() // max(self.threads, 1)))
        if warm_up_batch:
            self._segment(np.zeros((4 * self.multiple, 4 * self.multiple), np.float32))

    @property
    def class_labels(self) -> list[str] | None:
        return None

    def input_axis(self, start: ScanStart):  # pragma: no cover - frames have no signal axis
        raise AxisError(f"{self.name} is an image recognizer")

    def bind(self, start: ScanStart) -> Binding:
        if not start.imaging:
            raise AxisError(f"recognizer {self.name!r} takes image frames; scan {start.scan_id} is spectral")
        try:
            factor = length_factor(start.pixel_size.units, self.pixel_size.units)
        except AxisError as exc:
            raise AxisError(f"frame pixel size: {exc}") from None
        zoom = start.pixel_size.size * factor / self.pixel_size.size
        if not MIN_ZOOM <= zoom <= MAX_ZOOM:
            raise AxisError(
                f"frame pixel size {start.pixel_size.size:g} {start.pixel_size.units} would need rescaling by "
                f"{zoom:.3g} to the model's {self.pixel_size.size:g} {self.pixel_size.units}; "
                f"supported {MIN_ZOOM:g}–{MAX_ZOOM:g}")
        try:
            nm = start.pixel_size.size * length_factor(start.pixel_size.units, "nm")
        except AxisError:
            nm = None
        gate_px = self.gate_nm / nm if nm else 5.0
        tracker = DefectTracker(len(self.pp.defect_classes), gate_px=gate_px, max_gap=1,
                                class_names=self.pp.defect_classes)
        return Binding(self, None, None, {}, np.zeros(start.shape, dtype=bool),  # type: ignore[arg-type]
                       FrameState(zoom, tracker, nm))

    def pixel_specs(self) -> list[ArraySpec]:
        return []

    def frame_specs(self, shape: tuple[int, int], n_atoms: int, n_defects: int) -> list[ArraySpec]:
        return [ArraySpec(name="classes", dtype="uint8", shape=list(shape), labels=self.pp.labels),
                ArraySpec(name="atoms", dtype="float32", shape=[n_atoms, 3], labels=["x", "y", "class"],
                          units=["px", "px", ",".join(self.pp.atom_classes)]),
                ArraySpec(name="defects", dtype="float32", shape=[n_defects, 5],
                          labels=["x", "y", "class", "confidence", "track"],
                          units=["px", "px", ",".join(self.pp.defect_classes), "", ""])]

    def _segment(self, image: np.ndarray) -> np.ndarray:
        """Probabilities ``[C, h, w]`` of an image already at the model's pixel size."""
        h, w = image.shape
        m = self.multiple
        padded = np.pad(image, ((0, -h % m), (0, -w % m)), mode="reflect" if min(h, w) > 1 else "edge")
        with self._run_slots:
            probs = self.session.run(self._output_names, {self.card.input.name: padded[None, None]})[0]
        return probs[0, :, :h, :w]

    def process(self, items: list[WorkItem]) -> list[dict[str, Any]]:
        try:
            return [self._process_one(item) for item in items]
        except BaseException:
            for item in items:  # whatever did not reach the tracker never will: do not block later frames
                item.binding.state.forget([item.seq])
            raise

    def _process_one(self, item: WorkItem) -> dict[str, Any]:
        state: FrameState = item.binding.state
        classes, atoms, defects = recognize_image(self._segment, self.pp, item.spectra, state.zoom)
        ids, tracking = state.track_in_order(item.seq, item.row, defects)
        return {"classes": classes, "atoms": atoms,
                "defects": np.column_stack([defects, ids.astype(np.float32)]).astype(np.float32),
                "tracking": tracking}  # not an array: the frame_result header carries it

    def store(self, binding: Binding, frame: int, outputs: dict[str, np.ndarray]) -> None:
        state: FrameState = binding.state
        state.frames_done += 1
        state.last, state.last_frame = outputs, frame

    def summarize(self, binding: Binding) -> RecognizerSummary:
        state: FrameState = binding.state
        return RecognizerSummary(pixels_recognized=binding.pixels_done, frames_recognized=state.frames_done,
                                 tracking=state.tracker.summary(pixel_size_nm=state.pixel_size_nm),
                                 **latency_percentiles(binding.latencies_ms))

    def extras(self, binding: Binding) -> list[tuple[ArraySpec, np.ndarray]]:
        state: FrameState = binding.state
        if not state.last:
            return []
        specs = self.frame_specs(state.last["classes"].shape, len(state.last["atoms"]), len(state.last["defects"]))
        return [(spec, state.last[spec.name]) for spec in specs]

    def describe(self) -> dict[str, Any]:
        return self.card.model_dump(mode="json")
