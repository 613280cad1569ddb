"""Frame recognizers: a segmentation network applied frame by frame, then atoms, defects and tracks.

A frame is first rescaled to the pixel size the network was trained at (its card's input
``pixel_size``) — real microscopes do not use our simulator's pixel size — padded to a size the
network accepts, segmented, post-processed (``atoms.py``) and mapped back to the frame's own
pixels. Defects are linked from frame to frame by the scan's ``DefectTracker``; frames of a scan
reach the tracker in the order they arrived.

The rescaling rule (``zoom_factor``, ``rescale``) lives here only: the service, the offline scoring
(``scanlens.models.scoring``) and the training data (``scanlens.models``) all use it.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..protocol import topics
from ..protocol.messages import ArraySpec, FrameResult, PixelSize, RecognizerSummary, ScanStart
from .atoms import PostProcess, postprocess
from .axis import AxisError, length_factor
from .onnx_model import ModelError, OnnxModel
from .processor import FOREIGN_FRACTION, NOVEL, NOVELTY, Binding, Processor, Publication, WorkItem
from .seqs import SeqRanges
from .stats import latency_percentiles
from .tracking import DefectTracker

MIN_ZOOM, MAX_ZOOM = 0.25, 4.0
_UNIT_ZOOM = 1e-6  # |zoom - 1| below this: the frame is used as it is
#: Frames longer than this (model pixels, after rescaling) on a side are segmented in overlapping tiles
#: (``tile_bounds``; the ``frame_tile_px`` setting): ONNX Runtime's activations of one run grow with the
#: frame (about 550 MB for 1024², 150 MB for a 576² tile of stem-unet), and two runs are in flight.
DEFAULT_TILE_PX = 512
#: Model pixels of context each tile has beyond the part of it that is kept, where the card's
#: ``postprocess.tile_margin_px`` does not say: wider than stem-unet's receptive radius (about 52 px:
#: 3x3 convolutions at four scales), so a kept pixel sees what it would see in the whole frame.
DEFAULT_TILE_MARGIN_PX = 64


def _cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def zoom_factor(frame: PixelSize, model: PixelSize) -> float:
    """Model pixels per frame pixel; AxisError when the units do not convert."""
    return frame.size * length_factor(frame.units, model.units) / model.size


def rescale(image: np.ndarray, zoom: float) -> np.ndarray:
    """``image`` zoomed by ``zoom`` (linear interpolation, order 1); itself when ``zoom`` is 1."""
    return image if abs(zoom - 1.0) < _UNIT_ZOOM else ndimage.zoom(image, zoom, order=1)


def recognize_image(segment: Callable[[np.ndarray], np.ndarray], pp: PostProcess, image: np.ndarray,
                    zoom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame through a segmentation network, in the frame's own pixels: ``rescale`` by ``zoom``
    model pixels per frame pixel, ``segment`` (probabilities ``[C, h, w]``), post-process, scale back.

    Returns the class map (uint8, the frame's shape, nearest model pixel), atoms ``[n, 3]`` and defects
    ``[m, 4]`` with x, y in frame pixels. The service and the offline scoring both run frames through here.
    """
    frame = np.asarray(image, dtype=np.float32)
    scaled = rescale(frame, zoom)
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


#: The shortest frame side (in frame pixels, and after rescaling to the model) a recognizer accepts.
MIN_FRAME_EDGE = 2


def tile_bounds(size: int, tile: int, multiple: int) -> list[int]:
    """Where the kept parts of the tiles along one side of ``size`` (a multiple of ``multiple``) begin
    and end: ``ceil(size / tile)`` parts of nearly equal length, each boundary a multiple of
    ``multiple`` (so a network's pooling grid is the whole frame's), ``[0, size]`` when one tile does."""
    n = max(1, -(-size // tile)) if tile > 0 else 1
    bounds = sorted({round(k * size / n / multiple) * multiple for k in range(n + 1)})
    return bounds if len(bounds) > 1 else [0, size]


@dataclass
class FrameBinding(Binding):
    """Per scan: the rescaling, the tracker, the order frames must reach it in, the latest result."""

    zoom: float = 1.0  # model pixels per frame pixel
    filled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))  # [rows, cols], stays 0
    tracker: DefectTracker | None = None
    pixel_size_nm: float | None = None
    frame_interval_s: float | None = None  # scan_start's, for D in nm^2/s
    frames_done: int = 0
    stored: SeqRanges = field(default_factory=SeqRanges)  # the seqs of the frames recognized
    frames_novel: int = 0  # recognized frames whose novelty is above the threshold (models with novelty)
    foreign_reported: bool = False
    last: dict[str, Any] = field(default_factory=dict)
    last_frame: int | None = None
    order: collections.deque[int] = field(default_factory=collections.deque)  # seqs admitted, in order
    turn: threading.Condition = field(default_factory=threading.Condition)
    # results reach the event loop in the order their threads finish, which two frames in flight can
    # swap: publications wait here until every earlier admitted frame has been published or forgotten
    to_publish: collections.deque[int] = field(default_factory=collections.deque)
    held: dict[int, list[Publication]] = field(default_factory=dict)

    def work(self, scan_id: str, seq: int, row: int, col0: int, values: np.ndarray, t_received: float) -> WorkItem:
        return WorkItem(scan_id, self, seq, row, col0, values, t_received, values.size)

    def footprint(self) -> int:
        # ``filled``, the latest frame's class map, and the class maps of results held back for order
        # (at most the frames in flight: one per parallel inference run)
        return self.filled.nbytes * (2 + (self.processor.max_parallel or 2))

    def admit(self, seq: int) -> None:
        with self.turn:
            self.order.append(seq)
            self.to_publish.append(seq)

    def forget(self, seq: int) -> None:
        """A frame that will never reach the tracker (skipped, failed): let the next ones through."""
        with self.turn:
            if seq in self.order:
                self.order.remove(seq)
            if seq in self.to_publish and seq not in self.held:
                self.to_publish.remove(seq)
            self.turn.notify_all()

    def in_order(self, seq: int, publications: list[Publication]) -> list[Publication]:
        with self.turn:
            if seq not in self.to_publish:  # forgotten (its processing failed): nothing to wait for
                return publications + self._ready()
            self.held[seq] = publications
            return self._ready()

    def flush(self) -> list[Publication]:
        with self.turn:
            return self._ready()

    def _ready(self) -> list[Publication]:
        out: list[Publication] = []
        while self.to_publish and self.to_publish[0] in self.held:
            out += self.held.pop(self.to_publish.popleft())
        return out

    def track_in_order(self, seq: int, frame: int, defects: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Track ids for a frame's defects and the running tracking statistics after it; waits until
        every earlier admitted frame has been tracked."""
        with self.turn:
            self.turn.wait_for(lambda: not self.order or self.order[0] == seq)
            try:
                ids = self.tracker.update(frame, defects[:, :2], defects[:, 2].astype(np.intp))
                return ids, self.tracker.summary(pixel_size_nm=self.pixel_size_nm,
                                                 frame_interval_s=self.frame_interval_s)
            finally:
                if self.order and self.order[0] == seq:
                    self.order.popleft()
                self.turn.notify_all()

    def recognized(self, item: WorkItem) -> tuple[str, int]:
        return "frames_recognized", 1

    def store(self, item: WorkItem, outputs: dict[str, Any]) -> None:
        self.frames_done += 1
        self.stored.add(item.seq)
        self.frames_novel += bool(outputs.get(NOVEL))
        self.last, self.last_frame = outputs, item.row

    def pixels_within(self, expected: int) -> int:
        """Only frames whose seq is below ``expected``: those recognized before a scan_end that put them
        beyond its count are rejected, so not counted (their results stay in what was published)."""
        return self.stored.count_below(expected) * self.filled.size  # every frame has the scan's shape

    @property
    def novel_fraction(self) -> float | None:
        """The share of recognized frames flagged novel (None: the model has no novelty output)."""
        if self.processor.novelty_threshold is None:
            return None
        return self.frames_novel / self.frames_done if self.frames_done else 0.0

    def notices(self) -> list[tuple[str, str]]:
        fraction = self.novel_fraction
        if self.foreign_reported or fraction is None or fraction <= FOREIGN_FRACTION:
            return []
        self.foreign_reported = True
        return [("mostly_foreign", f"{self.processor.name}: {self.frames_novel} of the {self.frames_done} frames "
                 f"recognized so far ({fraction:.0%}) are novel, unlike its training frames: their atoms and defects "
                 "are not vouched for (each frame_result says novel)")]

    def publication(self, item: WorkItem, outputs: dict[str, Any], latency_ms: float) -> Publication:
        rec = self.processor
        specs = rec.frame_specs(outputs["classes"].shape, len(outputs["atoms"]), len(outputs["defects"]))
        return Publication(topics.scan_topic(item.scan_id, topics.FRAME), FrameResult(
            scan_id=item.scan_id, recognizer=rec.name, seq=item.seq, frame=item.row, latency_ms=latency_ms,
            n_atoms=len(outputs["atoms"]), n_defects=len(outputs["defects"]), arrays=specs,
            tracking=outputs.get("tracking"), novelty=outputs.get(NOVELTY), novel=outputs.get(NOVEL),
            revision=self.revision),
            [outputs[s.name] for s in specs])

    def snapshot_arrays(self) -> list[tuple[ArraySpec, np.ndarray]]:
        # ``filled`` as for spectral maps (frames fill no per-pixel maps, so it stays zero), then the
        # latest frame's results
        out = [(ArraySpec(name="filled", dtype="uint8", shape=list(self.filled.shape)), self.filled)]
        if self.last:
            specs = self.processor.frame_specs(self.last["classes"].shape, len(self.last["atoms"]),
                                               len(self.last["defects"]))
            out += [(spec, self.last[spec.name]) for spec in specs]
        return out


class FrameRecognizer(Processor):
    """An ONNX segmentation model whose card has an input pixel size.

    Two frames may be in flight at once — one in the network while the other is post-processed —
    but they reach the tracker (and so the subscribers) in the order they arrived. At most
    ``cores // intra-op threads`` frames are in the network at once (``limit_runs``): with one thread
    per run two frames run side by side on two cores; with two threads one run gets both cores, as in
    a bare ONNX Runtime loop, instead of two runs competing for them."""

    takes = "frames"
    max_parallel = 2

    def __init__(self, model: OnnxModel, *, warm_up: bool = True, tile_px: int = DEFAULT_TILE_PX):
        self.model = model
        card = model.card
        if card.input.pixel_size is None:
            raise ModelError(f"{model.path}: an image recognizer needs an input pixel_size")
        seg = model.outputs("segmentation")
        if len(seg) != 1:
            raise ModelError(f"{model.path}: an image recognizer needs exactly one segmentation output")
        self.name = card.name
        self.by_name_only = card.training.get("live") is True  # trained live on one sample's labels
        self.modality = card.modality
        self.seg_output = seg[0]
        self._output_names = [seg[0].name]
        self.novelty_threshold = card.novelty.threshold if card.novelty is not None else None
        if card.novelty is not None:
            self._output_names.append(card.novelty.output)
        try:
            self.pp = PostProcess.from_card(seg[0].labels, card.postprocess)
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{model.path}: invalid postprocess in the card: {exc}") from None
        self.pixel_size = card.input.pixel_size
        self.multiple = int(card.postprocess.get("size_multiple", 16))
        #: frames longer than this on a side are segmented in tiles (0: whole frames; ``segment_scored``)
        self.tile_px = tile_px
        margin = int(card.postprocess.get("tile_margin_px", DEFAULT_TILE_MARGIN_PX))
        self.tile_margin = -(-margin // self.multiple) * self.multiple  # a multiple of size_multiple
        #: the session tiles run on, one tile at a time (``_tile_session``); made at the first tiled frame
        self._tiles: OnnxModel | None = None
        self._tile_lock = threading.Lock()
        #: whether tiles get that session: on CPU, with fewer threads than cores, from a file it can reopen
        self._wide_tiles = (model.output_device == "cpu" and model.threads < _cores() and model.path.is_file())
        self.gate_nm = float(card.postprocess.get("track_gate_nm", 0.5))
        self.limit_runs(_cores() // max(model.threads, 1))
        if warm_up:
            self.segment(np.zeros((4 * self.multiple, 4 * self.multiple), np.float32))

    @property
    def path(self):
        return self.model.path

    @property
    def card(self):
        return self.model.card

    def bind(self, start: ScanStart) -> FrameBinding:
        if not start.imaging:
            raise AxisError(f"recognizer {self.name!r} takes image frames; scan {start.scan_id} is spectral")
        try:
            zoom = zoom_factor(start.pixel_size, self.pixel_size)
        except AxisError as exc:
            raise AxisError(f"frame pixel size: {exc}") from None
        if not MIN_ZOOM <= zoom <= MAX_ZOOM:
            raise AxisError(
                f"frame pixel size {start.pixel_size.size:g} {start.pixel_size.units} would need rescaling by "
                f"{zoom:.3g} to the model's {self.pixel_size.size:g} {self.pixel_size.units}; "
                f"supported {MIN_ZOOM:g}–{MAX_ZOOM:g}")
        if min(start.shape) < MIN_FRAME_EDGE or min(start.shape) * zoom < MIN_FRAME_EDGE:
            raise AxisError(f"a frame of {start.shape[0]}x{start.shape[1]} pixels ({min(start.shape) * zoom:.1f} "
                            f"model pixels on its short side) is too small: at least {MIN_FRAME_EDGE} are needed")
        try:
            nm = start.pixel_size.size * length_factor(start.pixel_size.units, "nm")
        except AxisError:
            nm = None
        gate_px = self.gate_nm / nm if nm else 5.0
        tracker = DefectTracker(len(self.pp.defect_classes), gate_px=gate_px, max_gap=1,
                                class_names=self.pp.defect_classes)
        return FrameBinding(self, zoom=zoom, filled=np.zeros(start.shape, dtype=np.uint8), tracker=tracker,
                            pixel_size_nm=nm, frame_interval_s=start.frame_interval_s)

    def max_publication_bytes(self, max_pixels: int, max_edge: int) -> int:
        # the uint8 class map of a whole frame, plus its atoms and defects
        # (a dense lattice has about one atom per 25 frame pixels: 12 bytes each, defects far fewer)
        return 2 * max_pixels + 65536

    def limit_runs(self, n: int) -> None:
        """Let at most ``n`` frames be in the network at once (default: cores // intra-op threads)."""
        self._run_slots = threading.BoundedSemaphore(max(1, n))

    def frame_specs(self, shape: tuple[int, int], n_atoms: int, n_defects: int) -> list[ArraySpec]:
        """The arrays of a ``frame_result``: class map, atoms, defects."""
        return [ArraySpec(name="classes", dtype="uint8", shape=list(shape), labels=self.pp.labels),
                ArraySpec(name="atoms", dtype="float32", shape=[n_atoms, 3], labels=["x", "y", "class"],
                          units=["px", "px", ",".join(self.pp.atom_classes)]),
                ArraySpec(name="defects", dtype="float32", shape=[n_defects, 5],
                          labels=["x", "y", "class", "confidence", "track"],
                          units=["px", "px", ",".join(self.pp.defect_classes), "", ""])]

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Probabilities ``[C, h, w]`` of an image already at the model's pixel size (padded for the
        network to a multiple of ``size_multiple``, cropped back)."""
        return self.segment_scored(image)[0]

    def segment_scored(self, image: np.ndarray) -> tuple[np.ndarray, float | None]:
        """``segment``, and the frame's novelty score (None: the model has no novelty output).

        A frame longer than ``tile_px`` on a side is segmented in overlapping tiles (docs/operations.md,
        "Memory"): each tile is the kept part (``tile_bounds``) plus ``tile_margin`` model pixels of the
        frame around it, and only its kept part is used. The network normalises each tile's intensities
        by the tile's own statistics, so its probabilities differ a little from the whole frame's; the
        frame's novelty is the highest of its tiles' (a frame is novel where any part of it is)."""
        h, w = image.shape
        m = self.multiple
        padded = (image if not (h % m or w % m) else  # np.pad copies even when there is nothing to pad
                  np.pad(image, ((0, -h % m), (0, -w % m)), mode="reflect" if min(h, w) > 1 else "edge"))
        rows = tile_bounds(padded.shape[0], self.tile_px, m)
        cols = tile_bounds(padded.shape[1], self.tile_px, m)
        if len(rows) == 2 and len(cols) == 2:
            probs, novelty = self._run(padded)
            return probs[:, :h, :w], novelty
        probs: np.ndarray | None = None
        scores: list[float] = []
        g = self.tile_margin
        for y0, y1 in zip(rows, rows[1:]):
            for x0, x1 in zip(cols, cols[1:]):
                a0, b0 = max(0, y0 - g), max(0, x0 - g)
                tile, score = self._run_tile(padded[a0:min(padded.shape[0], y1 + g),
                                                    b0:min(padded.shape[1], x1 + g)])
                ky, kx = min(y1, h), min(x1, w)  # the kept part, within the unpadded frame
                if probs is None:
                    probs = np.empty((tile.shape[0], h, w), tile.dtype)
                if ky > y0 and kx > x0:
                    probs[:, y0:ky, x0:kx] = tile[:, y0 - a0:ky - a0, x0 - b0:kx - b0]
                if score is not None:
                    scores.append(score)
                del tile  # before the next tile's run allocates its outputs
        assert probs is not None  # more than one tile ran
        return probs, (max(scores) if scores else None)

    def _run(self, image: np.ndarray, model: OnnxModel | None = None) -> tuple[np.ndarray, float | None]:
        """Probabilities ``[C, h, w]`` and novelty of one image whose sides are multiples of ``multiple``
        (on ``model``: the recognizer's own unless given)."""
        if model is None:
            with self._run_slots:
                return self._run(image, self.model)
        # through an I/O binding: under CUDA the outputs stay on the device until one copy at the end
        outputs = model.run_bound(self._output_names, np.ascontiguousarray(image)[None, None])
        novelty = float(outputs[1].reshape(-1)[0]) if len(outputs) > 1 else None
        return outputs[0][0], novelty

    def _run_tile(self, tile: np.ndarray) -> tuple[np.ndarray, float | None]:
        """One tile. On CPU the tiles of all frames run one at a time, each on every core (a session with
        ``cores`` intra-op threads): the memory of a run is that of one tile however many frames are in
        flight (two 1-thread runs of 576² tiles peak 135 MB higher than one 2-thread run, at the same
        rate; docs/performance.md, "Benchmark: frames"). On a GPU, or with a session that cannot be
        opened again from its file, they run as whole frames do."""
        with self._tile_lock:
            model = self._tile_session()
            if model is not None:
                return self._run(tile, model)
        return self._run(tile)

    def _tile_session(self) -> OnnxModel | None:
        """The session tiles run on (under ``_tile_lock``): ``cores`` threads, opened at the first tiled
        frame; None where tiles take the recognizer's own session instead."""
        if self._tiles is None and self._wide_tiles:
            self._tiles = OnnxModel.open(self.model.path, threads=_cores(), providers=self.model.providers[:1])
        return self._tiles

    def recognize(self, image: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class map, atoms and defects of one frame (``recognize_image`` with this network)."""
        return recognize_image(self.segment, self.pp, image, zoom)

    def process(self, items: list[WorkItem]) -> list[dict[str, Any]]:
        try:
            return [self._process_one(item) for item in items]
        except BaseException:
            for item in items:  # whatever did not reach the tracker never will: do not block later frames
                item.binding.forget(item.seq)
            raise

    def _process_one(self, item: WorkItem) -> dict[str, Any]:
        binding: FrameBinding = item.binding  # type: ignore[assignment]
        scores: list[float | None] = []

        def segment(image: np.ndarray) -> np.ndarray:
            probs, novelty = self.segment_scored(image)
            scores.append(novelty)
            return probs

        classes, atoms, defects = recognize_image(segment, self.pp, item.values, binding.zoom)
        ids, tracking = binding.track_in_order(item.seq, item.row, defects)
        out = {"classes": classes, "atoms": atoms,
               "defects": np.column_stack([defects, ids.astype(np.float32)]).astype(np.float32),
               "tracking": tracking}  # not an array: the frame_result header carries it, as novelty
        if self.novelty_threshold is not None and scores and scores[0] is not None:
            out[NOVELTY] = scores[0]
            out[NOVEL] = scores[0] > self.novelty_threshold
        return out

    def summarize(self, binding: Binding) -> RecognizerSummary:
        assert isinstance(binding, FrameBinding)
        return RecognizerSummary(pixels_recognized=binding.pixels_done, frames_recognized=binding.frames_done,
                                 novel_fraction=binding.novel_fraction, tracking=binding.tracker.summary(
                                     pixel_size_nm=binding.pixel_size_nm, frame_interval_s=binding.frame_interval_s),
                                 **latency_percentiles(binding.latencies_ms))

    def describe(self) -> dict[str, Any]:
        return self.model.describe()
