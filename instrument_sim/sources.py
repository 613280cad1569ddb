"""Scan sources: what a simulated instrument plays — modality, scan shape, signal axis, lines on demand.

A source is anything with ``modality``, ``shape``, ``axis``, ``meta`` and ``line(row)``; the
streaming code (``stream.py``) knows nothing about the physics behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from scanlens.protocol.messages import Axis

from .eels import PHASES, EELSConfig, EELSSample


class ScanSource(Protocol):
    modality: str
    shape: tuple[int, int]
    axis: Axis
    meta: dict[str, Any]
    # optional: components: list[str] — names of the last axis of multi-component lines

    def line(self, row: int) -> np.ndarray: ...


@dataclass
class EELSSource:
    """A simulated EELS spectrum image of an STO / LSMO / BFO heterostructure."""

    cfg: EELSConfig = field(default_factory=EELSConfig)
    modality: str = "eels"

    def __post_init__(self) -> None:
        self.sample = EELSSample(self.cfg)
        self.shape = (self.cfg.rows, self.cfg.cols)
        self.axis = self.cfg.axis
        self.meta = {"simulator": "instrument_sim.eels", "phases": list(PHASES), "seed": self.cfg.seed,
                     "dose": self.cfg.dose, "drift_eV": self.cfg.drift_eV}

    def line(self, row: int) -> np.ndarray:
        return self.sample.line(row)

    def save_ground_truth(self, path) -> None:
        self.sample.save_ground_truth(path)
