"""What every processor of a scan shares: the processor and binding interfaces, work items, publications.

A *processor* turns the data of a message (a line of spectra, or a frame) into published results.
Three kinds exist: spectral recognizers and analyzers (``spectral.py``, ``pca.py``: per-pixel maps)
and frame recognizers (``frames.py``: class maps, atoms, defects, tracks). ``bind`` attaches a
processor to one scan at ``scan_start`` and returns a ``Binding``: its per-scan state, how a message's
values become a ``WorkItem``, where results are stored and what is published for them. The scan
(``scan.py``) and the scan manager (``scans.py``) only talk to these two interfaces, so they never
ask which kind of processor they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from ..protocol.messages import ArraySpec, RecognizerSummary, ScanStart

#: The published names of a model's novelty output (docs/protocol.md §4.2): the score, and the mask of
#: scores above the card's threshold (1 = novel: unlike the training data, the answer not vouched for).
NOVELTY, NOVEL = "novelty", "novel"
#: A scan is reported ``mostly_foreign`` once more than this share of what a recognizer has seen is novel.
FOREIGN_FRACTION = 0.5

#: What a processor takes: lines of spectra (``data`` messages) or whole images (``frame`` messages).
Takes = Literal["spectra", "frames"]


def takes_of(start: ScanStart) -> Takes:
    """What a scan sends: frames when its ``scan_start`` has a pixel size, spectra otherwise."""
    return "frames" if start.imaging else "spectra"


@dataclass(frozen=True)
class Publication:
    """One message for the PUB socket: topic, header and the arrays that follow it."""

    topic: str
    header: BaseModel
    arrays: Sequence[np.ndarray] = ()


@dataclass
class WorkItem:
    """One accepted data or frame message on its way to one processor."""

    scan_id: str
    binding: Binding
    seq: int
    row: int  # a line's row, or a frame's index
    col0: int
    values: np.ndarray  # zero-copy view on the received buffer: [n, channels(, components)] or [h, w]
    t_received: float  # time.perf_counter()
    n_pixels: int  # pixels this item carries (a line's spectra, or every pixel of a frame)


@dataclass
class Binding(ABC):
    """A processor attached to one scan."""

    processor: Processor
    pixels_done: int = field(default=0, init=False)
    latencies_ms: list[float] = field(default_factory=list, init=False)  # receipt -> stored
    #: which live training of the processor this is (published with its results); None: loaded at start
    revision: int | None = field(default=None, init=False)

    @abstractmethod
    def work(self, scan_id: str, seq: int, row: int, col0: int, values: np.ndarray, t_received: float) -> WorkItem:
        """The work item of one accepted message."""

    def admit(self, seq: int) -> None:
        """A message of this scan is on its way to the processor (frames keep their order)."""

    def forget(self, seq: int) -> None:
        """A message admitted before will never be processed (skipped, failed)."""

    def in_order(self, seq: int, publications: list[Publication]) -> list[Publication]:
        """What to publish now for the result of ``seq``: these publications, or (for bindings that
        publish in arrival order) whatever has become publishable; see ``flush``."""
        return publications

    def flush(self) -> list[Publication]:
        """Publications held back for order that can go out now (after a ``forget``)."""
        return []

    @abstractmethod
    def store(self, item: WorkItem, outputs: dict[str, Any]) -> None:
        """Keep one item's results in the scan's state (maps, latest frame)."""

    @abstractmethod
    def publication(self, item: WorkItem, outputs: dict[str, Any], latency_ms: float) -> Publication:
        """What is published for one item's results."""

    def map_specs(self) -> list[ArraySpec]:
        """The per-pixel maps this binding fills, announced in ``scan_started`` (none for frames)."""
        return []

    def notices(self) -> list[tuple[str, str]]:
        """(event code, reason) of warnings the results stored so far call for, each at most once per scan
        (``mostly_foreign``); the manager publishes them after the result."""
        return []

    @abstractmethod
    def recognized(self, item: WorkItem) -> tuple[str, int]:
        """The service counter one recognized item adds to, and by how much."""

    @abstractmethod
    def snapshot_arrays(self) -> list[tuple[ArraySpec, np.ndarray]]:
        """The current state a late subscriber gets from ``snapshot`` (names without the prefix)."""

    def footprint(self) -> int:
        """The most bytes this binding's state can hold for its scan (maps, latest results, kept data):
        what the scan reserves in the memory budget (``memory.py``)."""
        return sum(values.nbytes for _, values in self.snapshot_arrays())

    def record(self, item: WorkItem, latency_ms: float) -> None:
        self.pixels_done += item.n_pixels
        self.latencies_ms.append(latency_ms)

    def pixels_within(self, expected: int) -> int:
        """The pixels recognized that the scan's summary counts, for a scan of ``expected`` messages (a
        binding whose items can lie beyond them says which of its pixels do not)."""
        return self.pixels_done


class Processor(ABC):
    """Base of recognizers and analyzers. Subclasses set ``name``, ``modality`` (None: any), ``takes``
    and ``max_parallel`` (None: as configured; 1 for processors with per-scan state updated in order)."""

    name: str
    modality: str | None = None
    takes: ClassVar[Takes]
    max_parallel: int | None = None
    #: only scans that name it get it (a model trained live on one sample: docs/live-training.md), never by modality
    by_name_only: bool = False
    #: batches of at most this many pixels run on the event loop itself (0: never): for a model whose run
    #: on so few pixels is shorter than the hand-off to an inference thread and back
    inline_pixels: int = 0

    @abstractmethod
    def bind(self, start: ScanStart) -> Binding:
        """Attach to one scan; AxisError (the scan is refused) when its data cannot be fed to this processor."""

    @abstractmethod
    def process(self, items: list[WorkItem]) -> list[dict[str, Any]]:
        """In a worker thread: the results of each item, keyed by output name."""

    def runs_inline(self, items: list[WorkItem], *, idle: bool) -> bool:
        """Whether ``items`` run on the event loop itself rather than in an inference thread: a batch of at
        most ``inline_pixels`` pixels; ``idle``: the worker has nothing queued or running (a subclass may
        then take more, where a run is short)."""
        return sum(item.n_pixels for item in items) <= self.inline_pixels

    def runs_alone(self, item: WorkItem) -> bool:
        """Whether ``item`` is best processed in a batch of its own (no batching gain, only a copy): then
        the worker's parallel runs share the queued items one each instead of one run taking them all."""
        return False

    def finish(self, binding: Binding) -> None:
        """Called once when the scan closes (e.g. to recompute maps with final state)."""

    @abstractmethod
    def summarize(self, binding: Binding) -> RecognizerSummary:
        """This processor's part of the scan summary."""

    @abstractmethod
    def max_publication_bytes(self, max_pixels: int, max_edge: int) -> int:
        """The largest message this processor can publish for a scan of at most ``max_pixels`` pixels
        and ``max_edge`` per side (the publish side's bound in bytes is derived from it)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the ``models`` control request reports about this processor."""
