"""What the streaming simulator plays: :class:`LoopsSource`, a switching-loop scan simulated up front."""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from scanlens.protocol.messages import Axis, PixelSize

from .config import COMPONENTS, PARAM_UNITS, PARAMS, LoopsConfig
from .ising import TEMPERATURE
from .sample import LoopsSample


class LoopsSource:
    """What the streaming simulator plays: a switching-loop scan of a disordered ferroelectric film.

    All loops are simulated up front (about 7 s for 64 x 64 on 2 processes; small scans in this
    process), so lines then stream at the instrument's pace, not the simulator's.
    """

    modality = "loops"

    def __init__(self, cfg: LoopsConfig = LoopsConfig(), workers: int = 2) -> None:
        self.cfg = cfg
        self.sample = LoopsSample(cfg)
        self.sample.precompute(workers=workers)
        self.shape: tuple[int, int] = (cfg.rows, cfg.cols)
        self.axis: Axis = cfg.axis
        self.scan_step = PixelSize(size=cfg.pixel_size_um, units="um")
        self.components: list[str] = list(COMPONENTS)
        self.meta: dict[str, Any] = {
            "simulator": "instrument_sim.loops",
            "params": list(PARAMS),
            "param_units": list(PARAM_UNITS),
            "components": list(COMPONENTS),
            "seed": cfg.seed,
            "noise": cfg.noise,
            "temperature_kBT": TEMPERATURE,
            "lattice": cfg.lattice,
            "grains": cfg.grains,
        }

    def line(self, row: int) -> np.ndarray:
        return self.sample.line(row)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        self.sample.save_ground_truth(path)
