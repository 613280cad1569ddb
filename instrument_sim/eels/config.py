"""What defines a simulated spectrum image: :class:`EELSConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scanlens.protocol.messages import Axis

from ..config_io import JSONConfig
from .spectra import DEFAULT_AXIS, SAMPLE_PHASES


@dataclass(frozen=True)
class EELSConfig(JSONConfig):
    """Everything that defines a simulated spectrum image; equal configs give identical data.

    JSON written before ``unknown_region`` or ``sample`` existed reads back with their defaults (off, and
    the ``"oxide"`` sample).

    ``sample`` picks the layer stack and its phases (:data:`~.spectra.SAMPLE_PHASES`): ``"oxide"``, the
    STO / LSMO / BFO heterostructure the shipped models were trained on, or ``"cto"``, a CaTiO3 /
    interface / NdGaO3 heterostructure none of whose phases they know (a user's own sample, for live
    training). Every other field means the same for both.
    """

    rows: int = 128
    cols: int = 128
    axis: Axis = DEFAULT_AXIS
    dose: float = 1.0e5  # total expected counts of one spectrum (0-128 eV)
    read_noise: float = 3.0  # Gaussian read noise, counts rms per channel
    drift_eV: float = 0.0  # peak-to-peak slow energy drift of the zero point over the scan (0 = off)
    interface_width_px: float = 2.5  # erf length: a = (1 + erf(d / w)) / 2, 10-90 % over 1.8 w
    roughness_px: float = 1.5  # rms lateral displacement of the interfaces
    seed: int = 0
    unknown_region: bool = False  # a region of LAO (not in the reference set) crossing the layers
    pixel_size_nm: float = 0.4  # scan step (the scan_start's scan_step); the sample is laid out in pixels
    sample: Literal["oxide", "cto"] = "oxide"  # which heterostructure: its layer stack and phases

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("rows and cols must be >= 1")
        if not self.dose > 0 or self.read_noise < 0 or self.drift_eV < 0:
            raise ValueError("dose must be > 0, read_noise and drift_eV >= 0")
        if not self.interface_width_px > 0 or self.roughness_px < 0:
            raise ValueError("interface_width_px must be > 0 and roughness_px >= 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not self.pixel_size_nm > 0:
            raise ValueError("pixel_size_nm must be > 0")
        if self.sample not in SAMPLE_PHASES:
            raise ValueError(f"sample must be one of {tuple(SAMPLE_PHASES)}, got {self.sample!r}")
