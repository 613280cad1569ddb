"""What the streaming simulator plays: :class:`EELSSource`, a spectrum image of a heterostructure."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanlens.protocol.messages import PixelSize

from .config import EELSConfig
from .sample import EELSSample


@dataclass
class EELSSource:
    """A simulated EELS spectrum image of an oxide heterostructure: STO / LSMO / BFO (``cfg.sample`` "oxide")
    or CTO / interface / NGO ("cto"); ``meta["phases"]`` names the sample's phases."""

    cfg: EELSConfig = field(default_factory=EELSConfig)
    modality: str = "eels"

    def __post_init__(self) -> None:
        self.sample = EELSSample(self.cfg)
        self.shape = (self.cfg.rows, self.cfg.cols)
        self.axis = self.cfg.axis
        self.scan_step = PixelSize(size=self.cfg.pixel_size_nm, units="nm")
        self.meta = {"simulator": "instrument_sim.eels", "phases": list(self.sample.phases), "seed": self.cfg.seed,
                     "dose": self.cfg.dose, "drift_eV": self.cfg.drift_eV}

    def line(self, row: int) -> np.ndarray:
        return self.sample.line(row)

    def save_ground_truth(self, path) -> None:
        self.sample.save_ground_truth(path)
