"""What the streaming simulator plays: :class:`BEPFMSource`, a BE-PFM scan of the bacteria mixture."""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from scanlens.protocol.messages import Axis, PixelSize

from .config import BEPFMConfig
from .oscillator import COMPONENTS
from .sample import BEPFMSample


class BEPFMSource:
    """What the streaming simulator plays: a BE-PFM scan of M. lysodeikticus and P. fluorescens (and
    B. subtilis spores with ``cfg.spores_per_100um2 > 0``; ``meta["classes"]`` then names them too)."""

    modality = "bepfm"

    def __init__(self, cfg: BEPFMConfig = BEPFMConfig()) -> None:
        self.cfg = cfg
        self.sample = BEPFMSample(cfg)
        self.shape: tuple[int, int] = (cfg.rows, cfg.cols)
        self.axis: Axis = cfg.axis
        self.scan_step = PixelSize(size=cfg.pixel_size_um, units="um")
        self.components: list[str] = list(COMPONENTS)
        self.meta: dict[str, Any] = {
            "simulator": "instrument_sim.bepfm",
            "classes": list(self.sample.classes),
            "components": list(COMPONENTS),
            "seed": cfg.seed,
            "pixel_size_um": cfg.pixel_size_um,
            "noise": cfg.noise,
        }

    def line(self, row: int) -> np.ndarray:
        return self.sample.line(row)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        self.sample.save_ground_truth(path)
