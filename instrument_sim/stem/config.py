"""What defines a simulated HAADF movie: class lists, lattice chemistry, :class:`STEMConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config_io import JSONConfig

LATTICES: tuple[str, ...] = ("ws2", "graphene")
SEG_CLASSES: tuple[str, ...] = (
    "background",
    "metal",
    "chalcogen",
    "metal_vacancy",
    "chalcogen_vacancy",
    "dopant",
    "adatom",
)
#: Classes of the atom list (``truth(i)["atoms"][:, 2]``).
ATOM_CLASSES: tuple[str, ...] = ("metal", "chalcogen", "dopant", "adatom")
#: Classes of the defects (``truth(i)["defects"][:, 2]``), the states of the Markov chain.
DEFECT_CLASSES: tuple[str, ...] = ("metal_vacancy", "chalcogen_vacancy", "dopant", "adatom")

#: HAADF intensity of a column is sum(Z**Z_EXPONENT) over its atoms.
Z_EXPONENT: float = 1.7
#: Radius of the label disks as a fraction of the nearest-neighbour (metal-chalcogen) distance.
LABEL_RADIUS_FRACTION: float = 0.4
#: Defects keep at least this many lattice constants between each other ...
MIN_SEPARATION_A: float = 3.0
#: ... and from the frame edges (in image coordinates).
MARGIN_A: float = 2.0

# Atom-class and defect-class index -> segmentation class index.
ATOM_TO_SEG = np.array([SEG_CLASSES.index(c) for c in ATOM_CLASSES], dtype=np.uint8)
DEFECT_TO_SEG = np.array([SEG_CLASSES.index(c) for c in DEFECT_CLASSES], dtype=np.uint8)
METAL, CHALCOGEN, DOPANT, ADATOM = range(4)  # ATOM_CLASSES indices
MVAC, CVAC, DDOP, DADA = range(4)  # DEFECT_CLASSES indices


@dataclass(frozen=True)
class LatticeSpec:
    """Geometry and chemistry of one lattice: lattice constant and the atoms (Z) of each kind of column."""

    a_nm: float
    metal: tuple[int, ...]
    chalcogen: tuple[int, ...]
    dopant: tuple[int, ...]
    adatom: tuple[int, ...]

    def weight(self, kind: str) -> float:
        """HAADF intensity of a column of ``kind`` relative to the host metal column."""
        zs: tuple[int, ...] = getattr(self, kind)
        return sum(z**Z_EXPONENT for z in zs) / sum(z**Z_EXPONENT for z in self.metal)


LATTICE_SPECS: dict[str, LatticeSpec] = {
    "ws2": LatticeSpec(a_nm=0.316, metal=(74,), chalcogen=(16, 16), dopant=(42,), adatom=(74,)),
    "graphene": LatticeSpec(a_nm=0.246, metal=(6,), chalcogen=(6,), dopant=(14,), adatom=(14,)),
}

_DEFAULT_TRANSITIONS: tuple[tuple[float, ...], ...] = (
    (0.94, 0.03, 0.01, 0.02),  # metal vacancy: mostly stays; may be refilled by an adatom (-> dopant/adatom)
    (0.02, 0.95, 0.01, 0.02),  # chalcogen vacancy
    (0.02, 0.01, 0.96, 0.01),  # dopant: the most stable
    (0.02, 0.02, 0.03, 0.93),  # adatom: the least stable, often captured by a vacancy (-> dopant)
)


@dataclass(frozen=True)
class STEMConfig(JSONConfig):
    """Everything that defines a simulated HAADF movie; equal configs give identical data.

    Besides the published fields: ``background`` (constant background as a fraction of ``dose``) and
    ``rotation_deg`` (in-plane lattice rotation in degrees; ``None`` = random per seed).
    """

    size: int = 512  # frame edge, px (square frames)
    pixel_size_nm: float = 0.02  # WS2: a = 15.8 px, nearest neighbour 9.1 px; graphene: a = 12.3 px
    lattice: str = "ws2"
    dose: float = 200.0  # expected counts at the peak of an isolated host metal column, above background
    blur_fwhm_nm: float = 0.09  # probe FWHM (Gaussian)
    drift_px_per_frame: float = 0.3  # specimen drift speed, px per frame time (random direction)
    jitter_px: float = 0.3  # rms horizontal shift per scan line
    n_defects: int = 12
    frames: int = 100
    # D per DEFECT_CLASSES in nm^2 per frame (<|dr|^2> = 4 D per frame): metal vacancy, chalcogen vacancy
    # (more mobile), dopant (least mobile), adatom (most mobile). In WS2 (a^2 = 0.0999 nm^2) the
    # site-bound ones hop 0.6, 0.8 and 0.4 times per frame on average.
    diffusion_nm2: tuple[float, ...] = (0.015, 0.02, 0.01, 0.025)
    transitions: tuple[tuple[float, ...], ...] = _DEFAULT_TRANSITIONS
    seed: int = 0
    background: float = 0.05  # constant background, fraction of dose
    rotation_deg: float | None = None  # None: random per seed

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) and store tuples, so configs stay hashable and comparable.
        object.__setattr__(self, "diffusion_nm2", tuple(float(d) for d in self.diffusion_nm2))
        object.__setattr__(self, "transitions", tuple(tuple(float(p) for p in row) for row in self.transitions))
        n = len(DEFECT_CLASSES)
        if self.lattice not in LATTICES:
            raise ValueError(f"unknown lattice {self.lattice!r}; expected one of {LATTICES}")
        if self.size < 32:
            raise ValueError("size must be >= 32")
        if not self.pixel_size_nm > 0 or not self.blur_fwhm_nm > 0:
            raise ValueError("pixel_size_nm and blur_fwhm_nm must be > 0")
        if not self.dose > 0 or self.background < 0:
            raise ValueError("dose must be > 0 and background >= 0")
        if self.drift_px_per_frame < 0 or self.jitter_px < 0:
            raise ValueError("drift_px_per_frame and jitter_px must be >= 0")
        if self.drift_px_per_frame >= self.size / 4:
            raise ValueError("drift_px_per_frame must be < size / 4")
        if self.n_defects < 0 or self.frames < 1 or self.seed < 0:
            raise ValueError("n_defects and seed must be >= 0, frames >= 1")
        if len(self.diffusion_nm2) != n or any(not (d >= 0 and math.isfinite(d)) for d in self.diffusion_nm2):
            raise ValueError(f"diffusion_nm2 must hold {n} finite values >= 0 (one per DEFECT_CLASSES)")
        p = np.array(self.transitions, dtype=np.float64) if len(self.transitions) else np.zeros((0,))
        if p.shape != (n, n) or np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError(f"transitions must be a {n}x{n} row-stochastic matrix")
        a_px = LATTICE_SPECS[self.lattice].a_nm / self.pixel_size_nm
        if a_px < 3:
            raise ValueError(f"pixel_size_nm too coarse: a lattice constant spans only {a_px:.1f} px")

    @property
    def spec(self) -> LatticeSpec:
        return LATTICE_SPECS[self.lattice]

    @property
    def a_px(self) -> float:
        """Lattice constant in px."""
        return self.spec.a_nm / self.pixel_size_nm

    @property
    def sigma_px(self) -> float:
        """Gaussian sigma of the probe in px."""
        return self.blur_fwhm_nm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / self.pixel_size_nm


def nearest_neighbour_spacing_px(cfg: STEMConfig) -> float:
    """Metal-chalcogen (honeycomb) nearest-neighbour distance ``a / sqrt(3)`` in px."""
    return cfg.a_px / math.sqrt(3.0)


#: Share of the frame's close packing of defects that :func:`defects_that_fit` allows (room to move too).
ROOM_FRACTION: float = 0.2


def defects_that_fit(size: int, pixel_size_nm: float, lattice: str) -> int:
    """How many defects a ``size`` px frame of ``lattice`` at ``pixel_size_nm`` holds with room to move: the
    defects stay ``MARGIN_A`` lattice constants inside the edges and ``MIN_SEPARATION_A`` apart, so a box of
    side ``L = size - 1 - 2 margin`` holds about ``((L + d) / d)**2`` of them at separation ``d``; this is
    ``ROOM_FRACTION`` of that (0 when the margins leave no box). ``scanlens sim stem`` uses it to cap its
    default number of defects for small frames (at 0.02 nm/px a 512 px WS2 frame holds 21, a 256 px one 5, a 64 px none)."""
    a_px = LATTICE_SPECS[lattice].a_nm / pixel_size_nm
    side = size - 1.0 - 2.0 * MARGIN_A * a_px
    if side < 1.0:
        return 0
    d = MIN_SEPARATION_A * a_px
    return int(ROOM_FRACTION * ((side + d) / d) ** 2)
