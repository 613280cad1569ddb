"""Atomic-resolution HAADF STEM of a 2-D crystal with point defects: frames, movies and their ground truth.

Pure numpy, no sockets, no torch. The simulator renders the training data of the STEM recognizer
(a U-Net that segments atoms and defects, as AtomAI does for WS2 and graphene defect libraries) and the
movies the streaming simulator plays to scanlens, together with exact ground truth: the position and
class of every atomic column, the position, class and identity of every defect, and a per-pixel
segmentation target in :data:`SEG_CLASSES`.

**Lattices** (:data:`LATTICES`). Both are honeycombs seen along the c axis: a hexagonal Bravais lattice
``a1 = a (cos t, sin t)``, ``a2 = a (cos(t + 60 deg), sin(t + 60 deg))`` with a "metal" site at ``0``
and a "chalcogen" site at ``(a1 + a2) / 3``, so the nearest-neighbour (metal-chalcogen) distance is
``a / sqrt(3)`` (:func:`nearest_neighbour_spacing_px`); the hollow site of the honeycomb is at
``2 (a1 + a2) / 3``. The in-plane rotation ``t`` is random per movie (seeded; or fixed by
``STEMConfig.rotation_deg``), and so is the lattice origin.

* ``"ws2"``: 2H-WS2, a = 0.316 nm. Metal columns hold one W (Z = 74), chalcogen columns an S2 pair
  (2 x Z = 16; the two S of a 2H layer project onto the same column). Dopant: Mo (Z = 42) on a metal
  site. Adatom: W.
* ``"graphene"``: a = 0.246 nm, C (Z = 6) on both sites. The A and B sublattices play the "metal" and
  "chalcogen" roles in the class lists (so the four defect classes and the Markov chain keep their
  meaning: ``chalcogen_vacancy`` is a vacancy on the B sublattice). Both are carbon and look identical:
  under an arbitrary rotation no recognizer can tell them apart from the image, so merge ``metal`` with
  ``chalcogen`` and ``metal_vacancy`` with ``chalcogen_vacancy`` when training or scoring on graphene.
  Dopant: Si (Z = 14) on an A site. Adatom: Si.

**Z-contrast.** The HAADF intensity of a column is ``sum over its atoms of Z**1.7`` (the Rutherford-like
exponent of high-angle scattering), expressed relative to the host metal column (W in WS2, C in
graphene): an S2 column is ``2 (16/74)**1.7 = 0.148`` of a W column, a Mo dopant ``(42/74)**1.7 =
0.382``, a Si dopant in graphene ``(14/6)**1.7 = 4.22`` of a C column. The chalcogen vacancy removes the
whole S2 column (a V_S2 double vacancy, not a single missing S): a site that is dark in the image, so
the ground truth stays unambiguous at the doses of interest; a single S vacancy would only halve a
column that is already 15 % of W.

**Imaging.** Each column is a Gaussian probe image (FWHM ``blur_fwhm_nm``) of peak ``weight`` on top of
a constant ``background`` (a fraction of ``dose``); the expected counts are ``dose * (background + sum_k
weight_k G_k)``, so ``dose`` is the expected peak counts of an isolated host metal column above the
background, and the detector draws Poisson counts (integers, returned as float32). Scan distortions
are applied in the forward model, pixel by pixel, where the scan samples the specimen:

* drift: the specimen moves at a constant velocity ``v`` (``|v| = drift_px_per_frame`` pixels per frame
  time, random direction per movie) while it is scanned row by row, so scan row ``r`` of frame ``i``
  sees it shifted by ``v (i + r / size)``: frame-to-frame shift ``v`` and a linear within-frame drift
  along the slow scan axis (which shears and stretches the lattice slightly);
* line jitter: every scan line gets its own random horizontal shift ``N(0, jitter_px)``.

Ground-truth coordinates are where an atom appears in the image (distorted frame): drift applied
exactly, the jitter of the rows it covers averaged with the probe profile (its intensity centroid).
``x`` is the column, ``y`` the row, pixel centres at integers.

**Defects and movies.** ``n_defects`` defects with ids ``0..n-1`` each carry a position and a class in
:data:`DEFECT_CLASSES`. Vacancies and dopants are bound to lattice sites (metal vacancies and dopants
to the metal sublattice, chalcogen vacancies to the chalcogen one) and move by hops to one of the six
nearest sites of their sublattice (a jump of one lattice constant ``a``): per frame a Poisson number of
hops with mean ``4 D / a**2``, each in a random direction, so that ``<|dr|**2> = 4 D`` per frame
exactly, as for a continuous walk, while every position stays a lattice site. Adatoms take a 2-D
Gaussian random-walk step with ``<|dr|**2> = 4 D`` per frame. ``D`` is in nm^2 per frame in the
config and in px^2 per frame as :attr:`STEMMovie.diffusion_px2`. After the step a defect changes
class with the row-stochastic transition matrix, and moves to the nearest site of its new class's
sublattice (a new adatom to the nearest hollow site of the honeycomb). Defects stay inside a margin of
2 lattice constants from the frame edges (a step that leaves it is redrawn; an adatom's step is
reflected off the edge first, in image coordinates) and at least 3 lattice constants apart (a step
that comes too close is redrawn; after 100 failed draws the defect stays, or takes the nearest allowed
site of its new class), so that every defect owns its lattice sites. That hard-core repulsion and
the walls slow the defects of a crowded movie below ``D``: by about 5 % in the demo's movie (1024 px,
32 defects; ``bench/dynamics.py``), by 10-15 % with 12 defects in 512 px, not measurably in a sparse
field. Rendering: a vacancy removes the column at its site, a
dopant replaces the metal column at its site, an adatom is an extra atom at its position. The
trajectories (specimen coordinates, drift-free) are the hidden state; ``truth(i)["defects"]`` reports
where each defect appears.

**Segmentation target.** ``labels`` paints a disk of radius 0.4 x the nearest-neighbour distance
(``0.073 nm`` in WS2, ``0.057 nm`` in graphene; disks never overlap) around every column in its class,
around every vacancy site in the vacancy's class, and around each dopant and adatom; everything else is
``background``.

**Speed.** Each column is rendered as an exact sampled Gaussian on a small patch (the distortions
evaluated row by row); a 512 x 512 WS2 frame (~2,400 columns) renders in ~25-30 ms on one core
(see the test module's notes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

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

_REDRAWS = 100  # redraws of a random-walk step that comes too close to another defect
_PLACEMENT_TRIES = 5_000
_PLACEMENT_RESTARTS = 20


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

# Atom-class and defect-class index -> segmentation class index.
_ATOM_TO_SEG = np.array([SEG_CLASSES.index(c) for c in ATOM_CLASSES], dtype=np.uint8)
_DEFECT_TO_SEG = np.array([SEG_CLASSES.index(c) for c in DEFECT_CLASSES], dtype=np.uint8)
_METAL, _CHALCOGEN, _DOPANT, _ADATOM = range(4)  # ATOM_CLASSES indices
_MVAC, _CVAC, _DDOP, _DADA = range(4)  # DEFECT_CLASSES indices

_DEFAULT_TRANSITIONS: tuple[tuple[float, ...], ...] = (
    (0.94, 0.03, 0.01, 0.02),  # metal vacancy: mostly stays; may be refilled by an adatom (-> dopant/adatom)
    (0.02, 0.95, 0.01, 0.02),  # chalcogen vacancy
    (0.02, 0.01, 0.96, 0.01),  # dopant: the most stable
    (0.02, 0.02, 0.03, 0.93),  # adatom: the least stable, often captured by a vacancy (-> dopant)
)


@dataclass(frozen=True)
class STEMConfig:
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

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> STEMConfig:
        return cls(**json.loads(text))


def nearest_neighbour_spacing_px(cfg: STEMConfig) -> float:
    """Metal-chalcogen (honeycomb) nearest-neighbour distance ``a / sqrt(3)`` in px."""
    return cfg.a_px / math.sqrt(3.0)


def _stationary(p: np.ndarray) -> np.ndarray:
    """Long-run class distribution of the chain started from uniform (uniform for the identity)."""
    pi = np.full(p.shape[0], 1.0 / p.shape[0]) @ np.linalg.matrix_power(p, 4096)
    return pi / pi.sum()


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold ``x`` into ``[lo, hi]`` by reflection off the ends."""
    span = hi - lo
    t = (x - lo) % (2.0 * span)
    return lo + (t if t <= span else 2.0 * span - t)


class _Scan:
    """The scan distortions of one frame: specimen (drift-free) <-> image coordinates."""

    def __init__(self, movie: STEMMovie, i: int, with_jitter: bool = True) -> None:
        cfg = movie.cfg
        self.size = cfg.size
        self.i = i
        self.vx, self.vy = float(movie.drift_velocity_px[0]), float(movie.drift_velocity_px[1])
        if with_jitter and cfg.jitter_px > 0:
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, i)))
            self.jitter = rng.normal(0.0, cfg.jitter_px, cfg.size)
        else:
            self.jitter = np.zeros(cfg.size)

    def row_shift(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drift offset (dx, dy) of the specimen seen by scan row(s) ``rows``."""
        t = self.i + np.asarray(rows, dtype=np.float64) / self.size
        return self.vx * t, self.vy * t

    def to_image(self, sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drift only: where a specimen point appears (row r sees y - dy(r), solved for r)."""
        y = (np.asarray(sy, dtype=np.float64) + self.vy * self.i) / (1.0 - self.vy / self.size)
        x = np.asarray(sx, dtype=np.float64) + self.vx * (self.i + y / self.size)
        return x, y

    def to_specimen(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`to_image`."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return x - self.vx * (self.i + y / self.size), y * (1.0 - self.vy / self.size) - self.vy * self.i

    def jitter_centroid(self, y: np.ndarray, sigma: float) -> np.ndarray:
        """Horizontal jitter of a spot centred on row ``y``, averaged over its rows with the probe profile."""
        y = np.asarray(y, dtype=np.float64)
        if not self.jitter.any() or y.size == 0:
            return np.zeros_like(y)
        h = int(math.ceil(4 * sigma))
        rows = np.round(y).astype(np.int64)[:, None] + np.arange(-h, h + 1)[None, :]
        inside = (rows >= 0) & (rows < self.size)
        w = np.exp(-0.5 * ((rows - y[:, None]) / sigma) ** 2) * inside
        j = self.jitter[np.clip(rows, 0, self.size - 1)]
        tot = w.sum(axis=1)
        return np.where(tot > 0, (w * j).sum(axis=1) / np.maximum(tot, 1e-300), 0.0)


@dataclass
class _FrameAtoms:
    """Columns of one frame in specimen coordinates, plus the vacancy sites (for the labels)."""

    sx: np.ndarray  # [n] specimen x, px
    sy: np.ndarray  # [n] specimen y, px
    cls: np.ndarray  # [n] ATOM_CLASSES index
    weight: np.ndarray  # [n] HAADF intensity relative to the host metal column
    vac_sx: np.ndarray
    vac_sy: np.ndarray
    vac_cls: np.ndarray  # DEFECT_CLASSES index


class STEMMovie:
    """A simulated HAADF movie: defect trajectories and classes precomputed, frames rendered on demand.

    Attributes: ``cfg``; ``rotation_deg``; ``origin_px`` (specimen coordinates of a metal site);
    ``drift_velocity_px`` ``[2]`` (x, y px per frame); ``trajectories`` ``[frames, n_defects, 2]``
    float64 specimen (drift-free) coordinates (x, y) px of each defect's continuous position;
    ``classes`` ``[frames, n_defects]`` int8 DEFECT_CLASSES index; ``diffusion_px2`` ``[4]`` D in px^2 per
    frame; ``transition_matrix`` ``[4, 4]``. Specimen coordinates coincide with image coordinates of the
    top-left pixel of frame 0.
    """

    def __init__(self, cfg: STEMConfig = STEMConfig()) -> None:
        self.cfg = cfg
        spec = cfg.spec
        self.diffusion_px2: np.ndarray = np.array(cfg.diffusion_nm2, dtype=np.float64) / cfg.pixel_size_nm**2
        self.transition_matrix: np.ndarray = np.array(cfg.transitions, dtype=np.float64)
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))

        a = cfg.a_px
        theta = math.radians(cfg.rotation_deg) if cfg.rotation_deg is not None else rng.uniform(0.0, 2 * math.pi)
        self.rotation_deg: float = math.degrees(theta) % 360.0
        self._basis = a * np.array(
            [[math.cos(theta), math.cos(theta + math.pi / 3)], [math.sin(theta), math.sin(theta + math.pi / 3)]]
        )  # columns a1, a2 (px)
        self._basis_inv = np.linalg.inv(self._basis)
        self.origin_px: np.ndarray = self._basis @ rng.uniform(0.0, 1.0, 2)
        self._chalcogen_offset = self._basis @ np.array([1.0, 1.0]) / 3.0
        self._hollow_offset = 2.0 * self._chalcogen_offset
        phi = rng.uniform(0.0, 2 * math.pi)
        self.drift_velocity_px: np.ndarray = cfg.drift_px_per_frame * np.array([math.cos(phi), math.sin(phi)])
        self._sigma = cfg.sigma_px
        self._weights = np.array([spec.weight(k) for k in ("metal", "chalcogen", "dopant", "adatom")])

        margin = MARGIN_A * a
        self._box = (margin, cfg.size - 1.0 - margin)
        self._min_sep = MIN_SEPARATION_A * a
        if cfg.n_defects and self._box[1] - self._box[0] < 1.0:
            raise ValueError(f"frame of {cfg.size} px too small for defects (margin {margin:.1f} px)")
        self.trajectories: np.ndarray
        self.classes: np.ndarray
        self._walk(rng)
        log.debug(
            "STEM movie %s: rotation %.1f deg, drift %s px/frame, %d defects, %d frames",
            cfg.lattice, self.rotation_deg, np.round(self.drift_velocity_px, 3), cfg.n_defects, cfg.frames,
        )

    # ------------------------------------------------------------------ lattice geometry

    def _nearest_site(self, p: np.ndarray, offset: np.ndarray) -> tuple[int, int, np.ndarray]:
        """Nearest site ``origin + offset + n1 a1 + n2 a2`` to specimen point ``p``: (n1, n2, position)."""
        f = self._basis_inv @ (p - self.origin_px - offset)
        best: tuple[int, int, np.ndarray] | None = None
        best_d = math.inf
        for n1 in (math.floor(f[0]), math.floor(f[0]) + 1):
            for n2 in (math.floor(f[1]), math.floor(f[1]) + 1):
                q = self.origin_px + offset + self._basis @ np.array([n1, n2], dtype=np.float64)
                d = float(np.sum((q - p) ** 2))
                if d < best_d:
                    best, best_d = (n1, n2, q), d
        assert best is not None
        return best

    def _site_offset(self, defect_cls: int) -> np.ndarray:
        return self._chalcogen_offset if defect_cls == _CVAC else np.zeros(2)

    # ------------------------------------------------------------------ defect dynamics

    def _walk(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        n, frames = cfg.n_defects, cfg.frames
        traj = np.zeros((frames, n, 2))
        classes = np.zeros((frames, n), dtype=np.int8)
        if n == 0:
            self.trajectories, self.classes = traj, classes
            return
        lo, hi = self._box
        scan0 = _Scan(self, 0, with_jitter=False)
        pi = _stationary(self.transition_matrix)
        classes[0] = rng.choice(len(DEFECT_CLASSES), size=n, p=pi)
        placed: list[np.ndarray] = []
        for _attempt in range(_PLACEMENT_RESTARTS):  # a crowded start can leave no room: start over
            placed = []
            for k in range(n):
                for _ in range(_PLACEMENT_TRIES):
                    x, y = rng.uniform(lo, hi, 2)
                    p = self._home(np.array(scan0.to_specimen(x, y)), int(classes[0, k]), -1)
                    if self._allowed(p, scan0, np.array(placed).reshape(-1, 2)):
                        placed.append(p)
                        break
                else:
                    break
            if len(placed) == n:
                break
        else:
            raise ValueError(
                f"could not place {n} defects {self._min_sep:.0f} px apart inside a {cfg.size} px frame; "
                "use fewer defects or a larger frame"
            )
        traj[0] = np.array(placed)

        hop_rate = self.diffusion_px2 * 4.0 / cfg.a_px**2  # site-bound classes: hops of length a per frame
        hops = self._basis @ np.array([[1, 0, -1, 0, 1, -1], [0, 1, 0, -1, -1, 1]], dtype=np.float64)  # [2, 6]
        cum = np.cumsum(self.transition_matrix, axis=1)
        cur = traj[0].copy()
        for i in range(frames - 1):
            scan = _Scan(self, i + 1, with_jitter=False)
            u = rng.random(n)
            nxt = np.minimum((u[:, None] >= cum[classes[i].astype(np.intp)]).sum(axis=1), len(DEFECT_CLASSES) - 1)
            for k in range(n):
                c_old, c_new = int(classes[i, k]), int(nxt[k])
                old = cur[k].copy()
                others = np.delete(cur, k, axis=0)
                if c_old == _DADA:
                    sd = math.sqrt(2.0 * self.diffusion_px2[c_old])
                    n_hops = 0
                else:
                    sd = 0.0
                    n_hops = int(rng.poisson(hop_rate[c_old]))
                moves = sd > 0 or n_hops > 0
                new = None
                for _ in range(_REDRAWS if moves else 1):
                    if sd > 0:  # a Gaussian step, reflected off the frame edges
                        cand = old + rng.normal(0.0, sd, 2)
                        x, y = scan.to_image(cand[0], cand[1])
                        cand = np.array(scan.to_specimen(_reflect(float(x), lo, hi), _reflect(float(y), lo, hi)))
                    elif n_hops:  # n_hops hops to a random one of the six neighbouring sites
                        cand = old + hops[:, rng.integers(0, 6, n_hops)].sum(axis=1)
                    else:
                        cand = old
                    cand = self._home(cand, c_new, c_old)
                    if self._allowed(cand, scan, others):
                        new = cand
                        break
                if new is None:  # stay: at the same place, or at the nearest allowed site of the new class
                    new = self._stay(old, c_old, c_new, scan, others)
                    if new is None:  # no room for the new class here (rare): the class change is dropped
                        new, nxt[k] = self._stay(old, c_old, c_old, scan, others), c_old
                        assert new is not None
                cur[k] = new
            traj[i + 1] = cur
            classes[i + 1] = nxt
        self.trajectories, self.classes = traj, classes

    def _home(self, p: np.ndarray, defect_cls: int, from_cls: int) -> np.ndarray:
        """Where a defect of class ``defect_cls`` (class ``from_cls`` before, -1 when new) near ``p`` sits:
        the nearest site of its sublattice; an adatom stays at ``p``, or takes the nearest hollow site
        when it has just appeared."""
        if defect_cls == _DADA:
            return p if from_cls == _DADA else self._nearest_site(p, self._hollow_offset)[2]
        return self._nearest_site(p, self._site_offset(defect_cls))[2]

    def _allowed(self, p: np.ndarray, scan: _Scan, others: np.ndarray) -> bool:
        """Inside the margin (image coordinates of ``scan``'s frame) and ``MIN_SEPARATION_A`` from ``others``."""
        lo, hi = self._box
        x, y = scan.to_image(p[0], p[1])
        if not (lo - 1e-9 <= x <= hi + 1e-9 and lo - 1e-9 <= y <= hi + 1e-9):
            return False
        return others.size == 0 or float(np.min(np.sum((others - p) ** 2, axis=1))) >= self._min_sep**2 - 1e-9

    def _stay(self, old: np.ndarray, c_old: int, c_new: int, scan: _Scan, others: np.ndarray) -> np.ndarray | None:
        """The position of a defect whose every move was refused: ``old`` if the class stays and it is
        allowed there, else the nearest allowed place for the new class (the box moves with the drift);
        ``None`` if there is none nearby."""
        if c_new == c_old and self._allowed(old, scan, others):
            return old
        lo, hi = self._box
        x, y = scan.to_image(old[0], old[1])
        clipped = np.array(scan.to_specimen(min(max(float(x), lo), hi), min(max(float(y), lo), hi)))
        if c_new == _DADA and c_old == _DADA:
            return clipped if self._allowed(clipped, scan, others) else None
        # nearby sites of the new class (hollow sites for a new adatom), nearest first
        offset = self._hollow_offset if c_new == _DADA else self._site_offset(c_new)
        f = self._basis_inv @ (clipped - self.origin_px - offset)
        g = np.stack(np.meshgrid(np.arange(-2, 4), np.arange(-2, 4)), axis=-1).reshape(-1, 2) + np.floor(f)
        sites = (self.origin_px + offset)[:, None] + self._basis @ g.T
        for j in np.argsort(np.sum((sites - clipped[:, None]) ** 2, axis=0)):
            if self._allowed(sites[:, j], scan, others):
                return sites[:, j]
        return None

    # ------------------------------------------------------------------ frame content

    def _check_frame(self, i: int) -> None:
        if not 0 <= i < self.cfg.frames:
            raise IndexError(f"frame {i} outside 0..{self.cfg.frames - 1}")

    def _frame_atoms(self, i: int, scan: _Scan, pad: float) -> _FrameAtoms:
        """Every column whose image lies within ``pad`` px of the frame, after the defects of frame ``i``."""
        size = self.cfg.size
        # Specimen bounding box of the padded frame (drift is linear in the row; jitter bounded).
        jmax = float(np.abs(scan.jitter).max()) if scan.jitter.size else 0.0
        rows = np.array([-pad, size - 1 + pad])
        dx, dy = scan.row_shift(rows)
        x_lo, x_hi = -pad - dx.max() - jmax - 1, size - 1 + pad - dx.min() + jmax + 1
        y_lo, y_hi = -pad - dy.max() - 1, size - 1 + pad - dy.min() + 1
        corners = np.array([[x_lo, x_lo, x_hi, x_hi], [y_lo, y_hi, y_lo, y_hi]]) - self.origin_px[:, None]
        f = self._basis_inv @ corners
        n1 = np.arange(math.floor(f[0].min()) - 1, math.ceil(f[0].max()) + 2)
        n2 = np.arange(math.floor(f[1].min()) - 1, math.ceil(f[1].max()) + 2)
        g1, g2 = np.meshgrid(n1, n2, indexing="ij")
        base = (self._basis @ np.stack([g1.ravel(), g2.ravel()]).astype(np.float64)) + self.origin_px[:, None]
        n_sites = base.shape[1]
        # site index k = (n1 - n1[0]) * len(n2) + (n2 - n2[0]); per sublattice 0 = metal, 1 = chalcogen.
        cls = np.concatenate([np.full(n_sites, _METAL), np.full(n_sites, _CHALCOGEN)])
        pos = np.concatenate([base, base + self._chalcogen_offset[:, None]], axis=1)
        present = np.ones(2 * n_sites, dtype=bool)
        vac: list[tuple[float, float, int]] = []
        extra: list[tuple[float, float, int]] = []
        for k in range(self.cfg.n_defects):
            c = int(self.classes[i, k])
            p = self.trajectories[i, k]
            if c == _DADA:
                extra.append((float(p[0]), float(p[1]), _ADATOM))
                continue
            s1, s2, q = self._nearest_site(p, self._site_offset(c))
            sub = 1 if c == _CVAC else 0
            j1, j2 = s1 - int(n1[0]), s2 - int(n2[0])
            if 0 <= j1 < n1.size and 0 <= j2 < n2.size:
                idx = sub * n_sites + j1 * n2.size + j2
                if c == _DDOP:
                    cls[idx] = _DOPANT
                else:
                    present[idx] = False
                    vac.append((float(q[0]), float(q[1]), c))
        pos, cls = pos[:, present], cls[present]
        if extra:
            e = np.array(extra)
            pos = np.concatenate([pos, e[:, :2].T], axis=1)
            cls = np.concatenate([cls, e[:, 2].astype(cls.dtype)])
        x, y = scan.to_image(pos[0], pos[1])
        keep = (x >= -pad - jmax) & (x <= size - 1 + pad + jmax) & (y >= -pad) & (y <= size - 1 + pad)
        v = np.array(vac, dtype=np.float64).reshape(-1, 3)
        return _FrameAtoms(
            sx=pos[0, keep], sy=pos[1, keep], cls=cls[keep].astype(np.intp), weight=self._weights[cls[keep]],
            vac_sx=v[:, 0], vac_sy=v[:, 1], vac_cls=v[:, 2].astype(np.intp),
        )

    def specimen_to_image(self, i: int, xy: np.ndarray) -> np.ndarray:
        """Map specimen (drift-free) coordinates ``[..., 2]`` (x, y) px to where they appear in frame ``i``
        (drift only: line jitter is per scan line and averages out over a spot, see :meth:`truth`)."""
        self._check_frame(i)
        xy = np.asarray(xy, dtype=np.float64)
        x, y = _Scan(self, i, with_jitter=False).to_image(xy[..., 0], xy[..., 1])
        return np.stack([x, y], axis=-1)

    def row_offsets_px(self, i: int) -> np.ndarray:
        """Scan distortion of frame ``i``: float64 ``[size, 2]`` (dx, dy) px by which scan row ``r`` sees
        the specimen shifted (drift ``v (i + r / size)`` plus the row's jitter in dx)."""
        self._check_frame(i)
        scan = _Scan(self, i)
        dx, dy = scan.row_shift(np.arange(self.cfg.size))
        return np.stack([dx + scan.jitter, dy], axis=1)

    def _patch_half(self) -> int:
        return int(math.ceil(4.0 * self._sigma)) + 1

    def expected_frame(self, i: int) -> np.ndarray:
        """Noise-free expected counts ``[size, size]`` float32 of frame ``i`` (same distortions as :meth:`frame`)."""
        self._check_frame(i)
        cfg = self.cfg
        size, sigma = cfg.size, self._sigma
        scan = _Scan(self, i)
        h = self._patch_half()
        jmax = int(math.ceil(float(np.abs(scan.jitter).max()))) if cfg.jitter_px > 0 else 0
        hx = h + jmax
        pad = 2 * hx + 3  # atoms up to h (+ jitter) outside the frame, patches of half-width hx
        atoms = self._frame_atoms(i, scan, float(h))
        # Render every column as a sampled Gaussian on a (2h+1) x (2hx+1) patch of a padded canvas;
        # row r of the patch sees the specimen shifted by the drift of row r and that row's jitter.
        xi, yi = scan.to_image(atoms.sx, atoms.sy)
        r = np.round(yi).astype(np.int64)[:, None] + np.arange(-h, h + 1)[None, :]  # [n, P]
        c0 = np.round(xi).astype(np.int64)[:, None] + np.arange(-hx, hx + 1)[None, :]  # [n, Q]
        dx, dy = scan.row_shift(r)
        jit = scan.jitter[np.clip(r, 0, size - 1)]
        inv2s2 = 0.5 / sigma**2
        gy = (np.exp(-((r - dy - atoms.sy[:, None]) ** 2) * inv2s2) * atoms.weight[:, None]).astype(np.float32)
        xc = (atoms.sx[:, None] + dx + jit).astype(np.float32)  # [n, P] centre of the spot in each row
        d = c0.astype(np.float32)[:, None, :] - xc[:, :, None]  # [n, P, Q]
        val = np.exp(-(d * d) * np.float32(inv2s2))
        val *= gy[:, :, None]
        width = size + 2 * pad
        idx = (r + pad)[:, :, None] * width + (c0 + pad)[:, None, :]
        canvas = np.bincount(idx.ravel(), weights=val.ravel(), minlength=width * width)
        img = canvas.reshape(width, width)[pad : pad + size, pad : pad + size]
        return (cfg.dose * (cfg.background + img)).astype(np.float32)

    def frame(self, i: int) -> np.ndarray:
        """Noisy HAADF counts ``[size, size]`` float32 (Poisson, integer-valued) of frame ``i``;
        the same for the same (config, i)."""
        lam = self.expected_frame(i)
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(2, i)))
        return rng.poisson(lam).astype(np.float32)

    def _truth(self, i: int, labels: bool = True) -> dict[str, np.ndarray]:
        self._check_frame(i)
        cfg = self.cfg
        size, sigma = cfg.size, self._sigma
        scan = _Scan(self, i)
        atoms = self._frame_atoms(i, scan, 1.0)
        x, y = scan.to_image(atoms.sx, atoms.sy)
        x = x + scan.jitter_centroid(y, sigma)
        inside = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
        atom_arr = np.stack([x[inside], y[inside], atoms.cls[inside]], axis=1).astype(np.float32)

        n = cfg.n_defects
        dpos = np.zeros((n, 2))
        for k in range(n):
            c = int(self.classes[i, k])
            p = self.trajectories[i, k]
            dpos[k] = p if c == _DADA else self._nearest_site(p, self._site_offset(c))[2]
        dxi, dyi = scan.to_image(dpos[:, 0], dpos[:, 1])
        dxi = dxi + scan.jitter_centroid(dyi, sigma)
        defects = np.stack([dxi, dyi, self.classes[i], np.arange(n)], axis=1).astype(np.float32).reshape(n, 4)
        out = {"atoms": atom_arr, "defects": defects}
        if labels:
            vx, vy = scan.to_image(atoms.vac_sx, atoms.vac_sy)
            vx = vx + scan.jitter_centroid(vy, sigma)
            lab = np.zeros((size, size), dtype=np.uint8)
            radius = LABEL_RADIUS_FRACTION * nearest_neighbour_spacing_px(cfg)
            seg_atoms = _ATOM_TO_SEG[atoms.cls]
            seg_vac = _DEFECT_TO_SEG[atoms.vac_cls]
            # Lattice columns first, then vacancies, dopants and adatoms on top.
            for group in ((1, 2), (3, 4), (5,), (6,)):
                sel = np.isin(seg_atoms, group)
                _paint_disks(lab, x[sel], y[sel], seg_atoms[sel], radius)
                sel = np.isin(seg_vac, group)
                _paint_disks(lab, vx[sel], vy[sel], seg_vac[sel], radius)
            out["labels"] = lab
        return out

    def truth(self, i: int) -> dict[str, np.ndarray]:
        """Ground truth of frame ``i`` in image coordinates (x = column, y = row, pixel centres at integers):

        * ``atoms``: float32 ``[n, 3]`` (x, y, ATOM_CLASSES index) of every column in the frame after the
          defects (vacancies removed, dopants and adatoms included);
        * ``defects``: float32 ``[m, 4]`` (x, y, DEFECT_CLASSES index, defect id) of every defect, at the
          site it occupies (vacancies, dopants) or its position (adatoms);
        * ``labels``: uint8 ``[size, size]`` segmentation target, SEG_CLASSES indices.
        """
        return self._truth(i, labels=True)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write every frame's atoms and defects, the trajectories, classes, D, transition matrix and
        config to an ``.npz`` file (no pickle; ragged per-frame lists are concatenated with a frame column)."""
        atoms, defects, offsets = [], [], [0]
        image_traj = np.zeros_like(self.trajectories)
        for i in range(self.cfg.frames):
            t = self._truth(i, labels=False)
            a = t["atoms"]
            atoms.append(np.concatenate([a, np.full((len(a), 1), i, np.float32)], axis=1))
            d = t["defects"]
            defects.append(np.concatenate([d, np.full((len(d), 1), i, np.float32)], axis=1))
            offsets.append(offsets[-1] + len(a))
            image_traj[i] = self.specimen_to_image(i, self.trajectories[i])
        np.savez_compressed(
            path,
            atoms=np.concatenate(atoms).astype(np.float32),
            atom_offsets=np.array(offsets, dtype=np.int64),
            defects=np.concatenate(defects).astype(np.float32),
            trajectories=self.trajectories,
            trajectories_image=image_traj,
            classes=self.classes,
            diffusion_px2=self.diffusion_px2,
            diffusion_nm2=np.array(self.cfg.diffusion_nm2),
            transition_matrix=self.transition_matrix,
            drift_velocity_px=self.drift_velocity_px,
            rotation_deg=np.array(self.rotation_deg),
            origin_px=self.origin_px,
            nn_spacing_px=np.array(nearest_neighbour_spacing_px(self.cfg)),
            seg_classes=np.array(SEG_CLASSES),
            atom_classes=np.array(ATOM_CLASSES),
            defect_classes=np.array(DEFECT_CLASSES),
            config=np.array(self.cfg.to_json()),
        )


def _paint_disks(lab: np.ndarray, x: np.ndarray, y: np.ndarray, value: np.ndarray, radius: float) -> None:
    """Set pixels whose centre lies within ``radius`` of (x, y) to ``value`` (one value per disk)."""
    if x.size == 0:
        return
    size = lab.shape[0]
    h = int(math.ceil(radius)) + 1
    off = np.arange(-h, h + 1)
    cx = np.round(x).astype(np.int64)[:, None, None] + off[None, None, :]
    cy = np.round(y).astype(np.int64)[:, None, None] + off[None, :, None]
    inside = ((cx - x[:, None, None]) ** 2 + (cy - y[:, None, None]) ** 2 <= radius**2)
    inside &= (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    vals = np.broadcast_to(np.asarray(value, dtype=np.uint8)[:, None, None], inside.shape)
    lab[np.broadcast_to(cy, inside.shape)[inside], np.broadcast_to(cx, inside.shape)[inside]] = vals[inside]


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what :meth:`STEMMovie.save_ground_truth` wrote.

    Arrays: ``atoms`` float32 ``[N, 4]`` (x, y, ATOM_CLASSES index, frame), ``atom_offsets`` int64
    ``[frames + 1]`` (frame ``i`` is ``atoms[off[i]:off[i + 1]]``), ``defects`` float32 ``[M, 5]``
    (x, y, DEFECT_CLASSES index, id, frame), ``trajectories`` ``[frames, n, 2]`` (specimen coordinates,
    drift-free), ``trajectories_image`` (the same walk in image coordinates, drift applied, not snapped),
    ``classes`` ``[frames, n]``, ``diffusion_px2``, ``diffusion_nm2``, ``transition_matrix``,
    ``drift_velocity_px``, ``origin_px``; scalars ``rotation_deg``, ``nn_spacing_px``; tuples of class
    names; ``config`` (STEMConfig).
    """
    with np.load(path, allow_pickle=False) as data:
        out: dict[str, Any] = {k: data[k] for k in data.files}
    for k in ("seg_classes", "atom_classes", "defect_classes"):
        out[k] = tuple(str(s) for s in out[k])
    out["rotation_deg"] = float(out["rotation_deg"])
    out["nn_spacing_px"] = float(out["nn_spacing_px"])
    out["config"] = STEMConfig.from_json(str(out["config"]))
    return out


def merge_sublattices(labels: np.ndarray) -> np.ndarray:
    """A copy of a label image with ``chalcogen`` merged into ``metal`` and ``chalcogen_vacancy`` into
    ``metal_vacancy``: the target for graphene, whose two sublattices look identical (see the module notes)."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    out[out == SEG_CLASSES.index("chalcogen")] = SEG_CLASSES.index("metal")
    out[out == SEG_CLASSES.index("chalcogen_vacancy")] = SEG_CLASSES.index("metal_vacancy")
    return out


@lru_cache(maxsize=8)
def _cached_movie(cfg: STEMConfig) -> STEMMovie:
    return STEMMovie(cfg)


def training_pair(cfg: STEMConfig, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy image float32, labels uint8) of frame ``i`` of the movie ``cfg`` describes.

    For independent single frames vary ``cfg.seed`` (new rotation, origin, defects, drift) and take
    ``i = 0``; the last few movies are cached, so frames of one movie are cheap to draw one by one.
    """
    movie = _cached_movie(cfg)
    return movie.frame(i), movie.truth(i)["labels"]


class STEMSource:
    """What the streaming simulator plays: a HAADF movie of a WS2 (or graphene) layer with moving defects."""

    modality = "haadf"

    def __init__(self, cfg: STEMConfig = STEMConfig()) -> None:
        self.cfg = cfg
        self.movie = STEMMovie(cfg)
        self.shape: tuple[int, int] = (cfg.size, cfg.size)
        self.frames: int = cfg.frames
        self.pixel_size_nm: float = cfg.pixel_size_nm
        self.meta: dict[str, Any] = {
            "simulator": "instrument_sim.stem",
            "lattice": cfg.lattice,
            "lattice_constant_nm": cfg.spec.a_nm,
            "nn_spacing_px": nearest_neighbour_spacing_px(cfg),
            "seg_classes": list(SEG_CLASSES),
            "atom_classes": list(ATOM_CLASSES),
            "defect_classes": list(DEFECT_CLASSES),
            "seed": cfg.seed,
            "pixel_size_nm": cfg.pixel_size_nm,
            "dose": cfg.dose,
            "blur_fwhm_nm": cfg.blur_fwhm_nm,
            "frames": cfg.frames,
        }

    def frame(self, i: int) -> np.ndarray:
        return self.movie.frame(i)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        self.movie.save_ground_truth(path)
