"""What defines a simulated BE-PFM scan: :class:`BEPFMConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from scanlens.protocol.messages import Axis

from ..config_io import JSONConfig
from .oscillator import DEFAULT_AXIS, axis_frequencies


@dataclass(frozen=True)
class BEPFMConfig(JSONConfig):
    """Everything that defines a simulated BE-PFM scan; equal configs give identical data.

    ``spores_per_100um2`` adds B. subtilis spores (:data:`~.parameters.SPORE_CLASS`, label 3), a class
    the shipped model does not know; at its default 0 a scan is exactly what it was before the field
    existed, and JSON written before then reads back with it.
    """

    rows: int = 128
    cols: int = 128
    axis: Axis = DEFAULT_AXIS
    pixel_size_um: float = 0.1
    noise: float = 1.0  # rms of the complex measurement noise per frequency bin, a.u.
    cocci_per_100um2: float = 9.0
    rods_per_100um2: float = 8.0
    edge_um: float = 0.03  # tanh length of the tip's blend of cell and substrate at a cell's rim
    min_gap_um: float = 0.1  # smallest distance between two cell outlines
    bg_corr_um: float = 2.0  # correlation length of the substrate's slow variations
    seed: int = 0
    spores_per_100um2: float = 0.0  # B. subtilis spores (label 3, not in CLASSES); 0 = none

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("rows and cols must be >= 1")
        if not self.pixel_size_um > 0 or self.noise < 0:
            raise ValueError("pixel_size_um must be > 0 and noise >= 0")
        if self.cocci_per_100um2 < 0 or self.rods_per_100um2 < 0 or not self.spores_per_100um2 >= 0:
            raise ValueError("cell densities must be >= 0")
        if not self.edge_um > 0 or self.min_gap_um < 0 or not self.bg_corr_um > 0:
            raise ValueError("edge_um and bg_corr_um must be > 0, min_gap_um >= 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        axis_frequencies(self.axis)  # raises for non-frequency units
