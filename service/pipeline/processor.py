"""What every per-pixel processor of a scan shares: binding to a scan, work items, the processor base.

A *processor* turns the pixels of a data message into per-pixel maps. Two kinds exist: ONNX
recognizers (``recognizer.py``: stateless, shared by all scans, batched across them) and built-in
analyzers such as streaming PCA (``pca.py``: state per scan). ``bind`` attaches a processor to a
scan once, at ``scan_start`` — axis mapping, component order, per-scan state and the maps it fills —
and refuses the scan there if the data cannot be fed to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..protocol.messages import ArraySpec, Axis, RecognizerSummary, ScanStart
from .axis import AxisError, AxisMap
from .stats import latency_percentiles

if TYPE_CHECKING:
    from .scan import ScanState


@dataclass
class Binding:
    """A processor attached to one scan: how to feed it, its per-scan state and the maps it fills."""

    processor: Processor
    axis_map: AxisMap
    component_order: np.ndarray | None  # indices into the scan's components; None = as sent
    maps: dict[str, np.ndarray]
    filled: np.ndarray  # bool [rows, cols]
    state: Any = None  # per-scan state of a stateful processor
    pixels_done: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # receipt of a line -> its maps published
    _line_specs: dict[int, list[ArraySpec]] = field(default_factory=dict)

    def line_specs(self, n: int) -> list[ArraySpec]:
        """The array specs of a maps message of ``n`` pixels (cached: lines have few distinct lengths)."""
        specs = self._line_specs.get(n)
        if specs is None:
            specs = [s.model_copy(update={"shape": [n, *s.shape]}) for s in self.processor.pixel_specs()]
            self._line_specs[n] = specs
        return specs

    def prepare(self, spectra: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Received pixels -> float32 on the processor's axis, components in its order."""
        if self.component_order is not None:
            spectra = spectra[..., self.component_order]
        return self.axis_map.apply(spectra, out=out)


@dataclass
class WorkItem:
    """One accepted data message on its way to one processor."""

    scan: ScanState
    binding: Binding
    seq: int
    row: int
    col0: int
    spectra: np.ndarray  # [n, channels(, components)] zero-copy view on the received frame
    t_received: float  # time.perf_counter()

    @property
    def n_pixels(self) -> int:
        """Pixels this item carries (a line's spectra, or every pixel of a frame)."""
        return self.spectra.size if self.binding.processor.imaging else self.spectra.shape[0]


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


class Processor:
    """Base of recognizers and analyzers. Subclasses set ``name``, ``modality`` (None: any) and
    ``max_parallel`` (None: as configured; 1 for processors with per-scan state) and implement
    ``input_axis``, ``pixel_specs`` and ``process``."""

    name: str
    modality: str | None = None
    max_parallel: int | None = None
    components: list[str] | None = None
    imaging = False  # True: takes whole frames (frames.py), not spectra

    # ---- binding

    def input_axis(self, start: ScanStart) -> Axis:
        raise NotImplementedError

    def new_state(self, start: ScanStart) -> Any:
        return None

    def needed_components(self, start: ScanStart) -> list[str] | None:
        """The components this processor takes from the scan, in its order (None: a scalar signal)."""
        return self.components

    def bind(self, start: ScanStart) -> Binding:
        if start.imaging:
            raise AxisError(f"recognizer {self.name!r} takes spectra; scan {start.scan_id} is an imaging scan")
        rows, cols = start.shape
        order = component_order(start.components, self.needed_components(start), self.name)
        axis_map = AxisMap.build(start.axis, self.input_axis(start))
        maps = {s.name: np.zeros((rows, cols, *s.shape), dtype=s.dtype) for s in self.pixel_specs()}
        return Binding(self, axis_map, order, maps, np.zeros((rows, cols), dtype=bool), self.new_state(start))

    # ---- per pixel

    def pixel_specs(self) -> list[ArraySpec]:
        """What a maps message carries per pixel, in order (shape without the leading pixel axis)."""
        raise NotImplementedError

    def process(self, items: list[WorkItem]) -> list[dict[str, np.ndarray]]:
        """In a worker thread: per item, the arrays named by ``pixel_specs``, each ``[n_pixels, ...]``."""
        raise NotImplementedError

    # ---- end of scan

    @property
    def class_labels(self) -> list[str] | None:
        return None

    def finish(self, binding: Binding) -> None:
        """Called once when the scan closes (e.g. to recompute maps with final state)."""

    def summarize(self, binding: Binding) -> RecognizerSummary:
        fractions = None
        labels = self.class_labels
        if labels is not None and "class" in binding.maps:
            counts = np.bincount(binding.maps["class"][binding.filled], minlength=len(labels))[: len(labels)]
            total = max(int(counts.sum()), 1)
            fractions = {label: float(c) / total for label, c in zip(labels, counts)}
        return RecognizerSummary(pixels_recognized=binding.pixels_done, class_fractions=fractions,
                                 **latency_percentiles(binding.latencies_ms))

    def extras(self, binding: Binding) -> list[tuple[ArraySpec, np.ndarray]]:
        """Arrays beyond the maps that a snapshot carries (e.g. PCA loadings)."""
        return []

    def describe(self) -> dict[str, Any]:
        """What the ``models`` control request reports about this processor."""
        raise NotImplementedError
