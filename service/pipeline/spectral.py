"""Spectral processors: per-pixel maps from lines of spectra, and the ONNX spectral recognizer.

``SpectralProcessor.bind`` maps the scan's calibrated axis onto the processor's (``axis.py``), picks
the components it needs in its order and allocates the full-resolution maps it fills; a
``SpectralBinding`` feeds each line through that mapping and writes the results into the maps.
``SpectralRecognizer`` is one ``OnnxModel`` whose card has an input axis. A line that already is what
the model takes (float32 on the model's axis, components in its order, contiguous, at least
``DIRECT_MIN_PIXELS`` spectra) runs on its own received buffer, with no copy; other items are mapped
into one float32 batch that each inference thread keeps and reuses (no allocation per batch), the
session runs once for them and the results are split by item (docs/performance.md, "How the service
is built for speed").
"""

from __future__ import annotations

import math
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..protocol import topics
from ..protocol.messages import ArraySpec, Axis, Maps, RecognizerSummary, ScanStart, line_slice
from .axis import AxisError, AxisMap
from .onnx_model import ModelError, OnnxModel
from .processor import FOREIGN_FRACTION, NOVEL, NOVELTY, Binding, Processor, Publication, WorkItem
from .stats import latency_percentiles

#: a model-ready line of at least this many spectra runs alone on its own buffer: on 2 cores a session
#: run of 256 spectra of 2048 channels is as fast per spectrum as one of 4096 (the batch stays in cache),
#: so batching such lines would only add a copy
DIRECT_MIN_PIXELS = 128


def component_order(scan: list[str] | None, needed: list[str] | None, name: str) -> np.ndarray | None:
    """Indices that pick ``needed`` components out of the scan's; AxisError if they are not all there."""
    if needed is None and scan is None:
        return None
    if needed is None or scan is None:
        raise AxisError(f"recognizer {name!r} expects components {needed or 'none'}; the scan sends "
                        f"{scan or 'none'}")
    missing = [c for c in needed if c not in scan]
    if missing:
        raise AxisError(f"recognizer {name!r} needs components {needed}; the scan sends {scan} "
                        f"(missing {missing})")
    order = np.array([scan.index(c) for c in needed], dtype=np.intp)
    return None if list(order) == list(range(len(scan))) else order


@dataclass
class SpectralBinding(Binding):
    """A spectral processor attached to one scan: axis mapping, component order, maps, state."""

    scan_id: str = ""
    axis_map: AxisMap | None = None
    component_order: np.ndarray | None = None  # indices into the scan's components; None = as sent
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    filled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # bool [rows, cols]
    state: Any = None  # per-scan state of a stateful processor
    novel_pixels: int = 0  # recognized pixels whose novelty is above the threshold (models with novelty)
    foreign_reported: bool = False
    _line_specs: dict[int, list[ArraySpec]] = field(default_factory=dict)

    def work(self, scan_id: str, seq: int, row: int, col0: int, values: np.ndarray, t_received: float) -> WorkItem:
        return WorkItem(scan_id, self, seq, row, col0, values, t_received, values.shape[0])

    def map_specs(self) -> list[ArraySpec]:
        return self.processor.pixel_specs()

    def recognized(self, item: WorkItem) -> tuple[str, int]:
        return "pixels_recognized", item.n_pixels

    def line_specs(self, n: int) -> list[ArraySpec]:
        """The array specs of a maps message of ``n`` pixels (cached: lines have few distinct lengths)."""
        specs = self._line_specs.get(n)
        if specs is None:
            specs = [s.model_copy(update={"shape": [n, *s.shape]}) for s in self.processor.pixel_specs()]
            self._line_specs[n] = specs
        return specs

    def ready(self, spectra: np.ndarray) -> bool:
        """Whether received pixels already are the processor's input as they are: float32 on its axis,
        components in its order, C-contiguous (then ``prepare`` would only copy them)."""
        return (self.axis_map.identity and self.component_order is None and spectra.dtype == np.float32
                and spectra.flags.c_contiguous)

    def prepare(self, spectra: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Received pixels -> float32 on the processor's axis, components in its order."""
        if self.component_order is not None:
            spectra = spectra[..., self.component_order]
        return self.axis_map.apply(spectra, out=out)

    def store(self, item: WorkItem, outputs: dict[str, Any]) -> None:
        sl = line_slice(item.row, item.col0, item.n_pixels)
        before = self.filled[sl]
        # distinct pixels: a line that overlaps earlier ones does not count its pixels twice
        new_pixels = item.n_pixels - int(np.count_nonzero(before))
        if NOVEL in outputs:
            self.novel_pixels += (int(np.count_nonzero(outputs[NOVEL]))
                                  - int(np.count_nonzero(self.maps[NOVEL][sl][before])))
        for name, values in outputs.items():
            self.maps[name][sl] = values
        self.pixels_done += new_pixels
        self.filled[sl] = True

    @property
    def novel_fraction(self) -> float | None:
        """The share of recognized pixels flagged novel (None: the processor has no novelty output)."""
        if NOVEL not in self.maps:
            return None
        return self.novel_pixels / self.pixels_done if self.pixels_done else 0.0

    def notices(self) -> list[tuple[str, str]]:
        fraction = self.novel_fraction
        if self.foreign_reported or fraction is None or fraction <= FOREIGN_FRACTION:
            return []
        self.foreign_reported = True
        return [("mostly_foreign", f"{self.processor.name}: {self.novel_pixels} of the {self.pixels_done} pixels "
                 f"recognized so far ({fraction:.0%}) are novel, unlike its training data: its maps of this scan "
                 "are not vouched for (the `novel` map shows where)")]

    def record(self, item: WorkItem, latency_ms: float) -> None:
        self.latencies_ms.append(latency_ms)  # pixels were counted by ``store``

    def publication(self, item: WorkItem, outputs: dict[str, Any], latency_ms: float) -> Publication:
        specs = self.line_specs(item.n_pixels)
        return Publication(topics.scan_topic(item.scan_id, topics.MAPS), Maps(
            scan_id=item.scan_id, recognizer=self.processor.name, seq=item.seq, row=item.row, col0=item.col0,
            n_pixels=item.n_pixels, latency_ms=latency_ms, arrays=specs, revision=self.revision),
            [outputs[s.name] for s in specs])

    def footprint(self) -> int:
        maps = sum(values.nbytes for values in self.maps.values())
        return maps + self.filled.nbytes + self.processor.state_bytes(self)

    def snapshot_arrays(self) -> list[tuple[ArraySpec, np.ndarray]]:
        pixel_specs = {s.name: s for s in self.processor.pixel_specs()}
        out = [(pixel_specs[name].model_copy(update={"shape": list(values.shape)}), values)
               for name, values in self.maps.items()]
        filled = self.filled.view(np.uint8)
        out.append((ArraySpec(name="filled", dtype="uint8", shape=list(filled.shape)), filled))
        return out + self.processor.extras(self)


class SpectralProcessor(Processor):
    """A processor of spectra: subclasses implement ``input_axis``, ``pixel_specs`` and ``process``."""

    takes = "spectra"
    components: list[str] | None = None

    @abstractmethod
    def input_axis(self, start: ScanStart) -> Axis:
        """The axis this processor wants the scan's spectra on."""

    def new_state(self, start: ScanStart) -> Any:
        return None

    def max_publication_bytes(self, max_pixels: int, max_edge: int) -> int:
        per_pixel = sum(np.dtype(s.dtype).itemsize * int(np.prod(s.shape)) for s in self.pixel_specs())
        return per_pixel * min(max_pixels, max_edge) + 65536  # one line of maps, and its header

    def state_bytes(self, binding: SpectralBinding) -> int:
        """The most bytes the per-scan state of ``new_state`` can grow to (beyond the maps)."""
        return 0

    def needed_components(self, start: ScanStart) -> list[str] | None:
        """The components this processor takes from the scan, in its order (None: a scalar signal)."""
        return self.components

    def bind(self, start: ScanStart) -> SpectralBinding:
        if start.imaging:
            raise AxisError(f"recognizer {self.name!r} takes spectra; scan {start.scan_id} is an imaging scan")
        rows, cols = start.shape
        order = component_order(start.components, self.needed_components(start), self.name)
        axis_map = AxisMap.build(start.axis, self.input_axis(start))
        maps = {s.name: np.zeros((rows, cols, *s.shape), dtype=s.dtype) for s in self.pixel_specs()}
        return SpectralBinding(self, scan_id=start.scan_id, axis_map=axis_map, component_order=order, maps=maps,
                               filled=np.zeros((rows, cols), dtype=bool), state=self.new_state(start))

    @abstractmethod
    def pixel_specs(self) -> list[ArraySpec]:
        """What a maps message carries per pixel, in order (shape without the leading pixel axis)."""

    @property
    def class_labels(self) -> list[str] | None:
        return None

    def summarize(self, binding: Binding) -> RecognizerSummary:
        assert isinstance(binding, SpectralBinding)
        fractions = None
        labels = self.class_labels
        if labels is not None and "class" in binding.maps:
            counts = np.bincount(binding.maps["class"][binding.filled], minlength=len(labels))[: len(labels)]
            total = max(int(counts.sum()), 1)
            fractions = {label: float(c) / total for label, c in zip(labels, counts)}
        return RecognizerSummary(pixels_recognized=binding.pixels_done, class_fractions=fractions,
                                 novel_fraction=binding.novel_fraction, **latency_percentiles(binding.latencies_ms))

    def extras(self, binding: SpectralBinding) -> list[tuple[ArraySpec, np.ndarray]]:
        """Arrays beyond the maps that a snapshot carries (e.g. PCA loadings)."""
        return []


class SpectralRecognizer(SpectralProcessor):
    """An ONNX model whose card has an input axis; ``run`` maps a float32 batch to the published arrays."""

    #: up to 4 spectra run on the event loop: a run of the shipped models on 4 spectra took 21–66 µs
    #: (median; loops-mlp the slowest), less than the hand-off to an inference thread and back
    inline_pixels = 4
    #: a lone line that already is the model's input runs on the event loop, when nothing else is queued or
    #: running for this recognizer and no message waits for ingest, if its run is expected to take at most
    #: this long (from the warm-up runs' time per spectrum, in cache: a cold line takes up to twice as
    #: long): waking an idle inference thread and the event loop again cost 0.3 ms and more, and the thread
    #: reads the line from another core's cache (docs/performance.md)
    idle_inline_s = 0.003
    idle_inline_pixels = 0  # set from the warm-up run (0: never)

    def __init__(self, model: OnnxModel, *, warm_up_batch: int = 512):
        self.model = model
        card = model.card
        if card.input.axis is None:
            raise ModelError(f"{model.path}: a spectral recognizer needs an input axis")
        self.name = card.name
        self.by_name_only = card.training.get("live") is True  # trained live on one sample's labels
        self.modality = card.modality
        self.components = card.input.components
        self.channels = card.input.axis.size
        self.input_shape = (self.channels,) if self.components is None else (self.channels, len(self.components))
        self._output_names = [o.name for o in card.outputs]
        self.novelty_threshold = card.novelty.threshold if card.novelty is not None else None
        self._pixel_specs = self._build_pixel_specs()
        self._buffers = threading.local()  # each inference thread's reused batch (``_batch``)
        if warm_up_batch:
            self.idle_inline_pixels = self._idle_inline_pixels(np.zeros((warm_up_batch, *self.input_shape),
                                                                        np.float32))

    @property
    def path(self):
        return self.model.path

    @property
    def card(self):
        return self.model.card

    def input_axis(self, start: ScanStart) -> Axis:
        return self.model.card.input.axis

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    @property
    def class_labels(self) -> list[str] | None:
        for out in self.model.outputs("class_probabilities"):
            return out.labels
        return None

    def pixel_specs(self) -> list[ArraySpec]:
        return list(self._pixel_specs)

    def _build_pixel_specs(self) -> tuple[ArraySpec, ...]:
        specs: list[ArraySpec] = []
        for out in self.model.card.outputs:
            if out.role == "class_probabilities":
                specs.append(ArraySpec(name="class", dtype="uint8", shape=[], labels=out.labels))
                specs.append(ArraySpec(name="confidence", dtype="float32", shape=[]))
            elif out.role == "novelty":
                specs.append(ArraySpec(name=NOVELTY, dtype="float32", shape=[]))
                specs.append(ArraySpec(name=NOVEL, dtype="uint8", shape=[]))
            else:
                specs.append(ArraySpec(name=out.name, dtype="float32", shape=[len(out.labels)],
                                       labels=out.labels, units=out.units))
        return tuple(specs)

    def process(self, items: list[WorkItem]) -> list[dict[str, np.ndarray]]:
        """Outputs per item: model-ready lines of ``DIRECT_MIN_PIXELS`` or more each run on their own
        buffer; the others are mapped into this thread's reused batch and run together once."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(items)
        copied = []
        single = len(items) == 1
        for i, item in enumerate(items):
            if self.runs_alone(item) or (single and item.binding.ready(item.values)):  # nothing to batch with
                results[i] = self.run(item.values)
            else:
                copied.append(i)
        if copied:
            total = sum(items[i].n_pixels for i in copied)
            batch = self._batch(total)
            offset = 0
            for i in copied:
                n = items[i].n_pixels
                items[i].binding.prepare(items[i].values, out=batch[offset: offset + n])
                offset += n
            outputs = self.run(batch)
            offset = 0
            for i in copied:
                end = offset + items[i].n_pixels
                results[i] = {name: values[offset:end] for name, values in outputs.items()}
                offset = end
        return results  # type: ignore[return-value]

    def runs_alone(self, item: WorkItem) -> bool:
        return item.n_pixels >= DIRECT_MIN_PIXELS and item.binding.ready(item.values)

    def runs_inline(self, items: list[WorkItem], *, idle: bool) -> bool:
        if super().runs_inline(items, idle=idle):
            return True
        return (idle and len(items) == 1 and items[0].n_pixels <= self.idle_inline_pixels
                and items[0].binding.ready(items[0].values))

    def _idle_inline_pixels(self, batch: np.ndarray) -> int:
        """The warm-up: three runs of ``batch``; from the fastest, the most spectra a run takes in
        ``idle_inline_s`` (at most ``2**16``)."""
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            self.run(batch)
            best = min(best, time.perf_counter() - t0)
        return min(2**16, int(self.idle_inline_s * len(batch) / max(best, 1e-9)))

    def _batch(self, n: int) -> np.ndarray:
        """The first ``n`` rows of this inference thread's batch buffer, grown (never shrunk) to fit: a
        fresh 32 MiB array per batch costs more in page faults than copying the spectra into it."""
        buf = getattr(self._buffers, "batch", None)
        if buf is None or len(buf) < n:
            buf = self._buffers.batch = np.empty((n, *self.input_shape), dtype=np.float32)
        return buf[:n]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 ``[n, channels]`` -> published arrays keyed like ``pixel_specs`` (each ``[n, ...]``)."""
        raw = self.model.run(self._output_names, batch)
        result: dict[str, np.ndarray] = {}
        for out, value in zip(self.model.card.outputs, raw):
            if out.role == "class_probabilities":
                result["class"] = value.argmax(axis=1).astype(np.uint8)
                result["confidence"] = value.max(axis=1).astype(np.float32, copy=False)
            elif out.role == "novelty":
                score = value.reshape(len(value)).astype(np.float32, copy=False)
                result[NOVELTY] = score
                result[NOVEL] = (score > self.novelty_threshold).astype(np.uint8)
            else:
                result[out.name] = value.astype(np.float32, copy=False)
        return result
