"""What defines a simulated switching-loop scan: :class:`LoopsConfig` and the names of its maps and loops."""

from __future__ import annotations

from dataclasses import dataclass

from scanlens.protocol.messages import Axis

from ..config_io import JSONConfig
from .ising import GRAINS, LATTICE
from .sweep import DEFAULT_AXIS, SWEEPS_PER_STEP, axis_sampling, field_ramp

PARAMS: tuple[str, ...] = ("J0", "dJ", "dh")
#: J0, dJ and dh are energies in units of the thermal energy k_B T of the fixed temperature.
PARAM_UNITS: tuple[str, ...] = ("k_BT", "k_BT", "k_BT")
COMPONENTS: tuple[str, ...] = ("up", "down")


@dataclass(frozen=True)
class LoopsConfig(JSONConfig):
    """Everything that defines a simulated switching-loop scan; equal configs give identical data.

    The sample has a smooth coupling map ``J0`` (``j0_range``) and two independent patchworks of
    regions: random-bond regions where ``dJ`` rises from the first to the second value of ``dJ_levels``
    and random-field regions where ``dh`` does the same over ``dh_levels``; where they overlap the
    disorder is mixed, where neither is present the film is clean. ``noise`` is the rms of the white
    measurement noise added to every loop point, in units of the saturation polarisation. The default
    levels keep every kind of region recognisable from its loops (see the module docstring).
    """

    rows: int = 64
    cols: int = 64
    axis: Axis = DEFAULT_AXIS
    noise: float = 0.03
    seed: int = 0
    j0_range: tuple[float, float] = (0.7, 3.1)
    dJ_levels: tuple[float, float] = (0.2, 3.0)
    dh_levels: tuple[float, float] = (0.3, 6.0)
    bond_fraction: float = 0.4  # share of the scan in random-bond (or mixed) regions
    field_fraction: float = 0.5  # share of the scan in random-field (or mixed) regions
    region_px: float = 9.0  # correlation length of the region patchworks
    lattice: int = LATTICE
    grains: int = GRAINS
    sweeps_per_step: int = SWEEPS_PER_STEP
    pixel_size_um: float = 0.1  # scan step of the switching-spectroscopy grid (the scan_start's scan_step)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("rows and cols must be >= 1")
        if self.noise < 0 or self.seed < 0:
            raise ValueError("noise and seed must be >= 0")
        for name in ("j0_range", "dJ_levels", "dh_levels"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be 0 <= low <= high")
        if not self.region_px > 0 or not self.pixel_size_um > 0:
            raise ValueError("region_px and pixel_size_um must be > 0")
        if not (0 < self.bond_fraction < 1 and 0 < self.field_fraction < 1):
            raise ValueError("bond_fraction and field_fraction must lie in (0, 1)")
        axis_sampling(self.axis, field_ramp(self.sweeps_per_step))  # the axis must lie inside the sweep
