"""Defect dynamics of a movie: placement, site hops and adatom steps, class changes, hard-core repulsion."""

from __future__ import annotations

import math

import numpy as np

from .config import DADA, DEFECT_CLASSES, MARGIN_A, MIN_SEPARATION_A, STEMConfig
from .lattice import LatticeGeometry
from .scan import Scan

_REDRAWS = 100  # redraws of a random-walk step that comes too close to another defect
_PLACEMENT_TRIES = 5_000
_PLACEMENT_RESTARTS = 20

# The six nearest sites of a sublattice, in lattice vectors (a1, a2).
_HOPS = np.array([[1, 0, -1, 0, 1, -1], [0, 1, 0, -1, -1, 1]], dtype=np.float64)


def _stationary(p: np.ndarray) -> np.ndarray:
    """Long-run class distribution of the chain started from uniform (uniform for the identity)."""
    pi = np.full(p.shape[0], 1.0 / p.shape[0]) @ np.linalg.matrix_power(p, 4096)
    return pi / pi.sum()


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold ``x`` into ``[lo, hi]`` by reflection off the ends."""
    span = hi - lo
    t = (x - lo) % (2.0 * span)
    return lo + (t if t <= span else 2.0 * span - t)


class DefectWalk:
    """The walk of ``cfg.n_defects`` defects over ``cfg.frames`` frames (see the package notes).

    Positions are specimen (drift-free) coordinates; the frame margin is checked in image coordinates of
    each frame (drift only), so the allowed box moves with the drift.
    """

    def __init__(
        self, cfg: STEMConfig, lattice: LatticeGeometry, velocity_px: np.ndarray, diffusion_px2: np.ndarray,
        transition_matrix: np.ndarray,
    ) -> None:
        self.cfg = cfg
        self.lattice = lattice
        self.velocity_px = velocity_px
        self.diffusion_px2 = diffusion_px2
        self.transition_matrix = transition_matrix
        a = cfg.a_px
        margin = MARGIN_A * a
        self.box = (margin, cfg.size - 1.0 - margin)
        self.min_sep = MIN_SEPARATION_A * a
        if cfg.n_defects and self.box[1] - self.box[0] < 1.0:
            raise ValueError(f"frame of {cfg.size} px too small for defects (margin {margin:.1f} px)")
        self.hop_rate = diffusion_px2 * 4.0 / cfg.a_px**2  # site-bound classes: hops of length a per frame
        self.hops = lattice.basis @ _HOPS  # [2, 6]
        self.cum = np.cumsum(transition_matrix, axis=1)

    def run(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Trajectories ``[frames, n, 2]`` float64 and classes ``[frames, n]`` int8, drawn from ``rng``."""
        n, frames = self.cfg.n_defects, self.cfg.frames
        traj = np.zeros((frames, n, 2))
        classes = np.zeros((frames, n), dtype=np.int8)
        if n == 0:
            return traj, classes
        classes[0] = rng.choice(len(DEFECT_CLASSES), size=n, p=_stationary(self.transition_matrix))
        traj[0] = self._place(rng, classes[0])
        cur = traj[0].copy()
        for i in range(frames - 1):
            classes[i + 1] = self._step(rng, i + 1, cur, classes[i])
            traj[i + 1] = cur
        return traj, classes

    def _scan(self, i: int) -> Scan:
        return Scan(self.cfg, self.velocity_px, i, with_jitter=False)

    # ------------------------------------------------------------------ frame 0

    def _place(self, rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
        """Positions ``[n, 2]`` of defects of ``classes`` at random allowed places of frame 0."""
        scan0 = self._scan(0)
        for _attempt in range(_PLACEMENT_RESTARTS):  # a crowded start can leave no room: start over
            placed = self._place_all(rng, classes, scan0)
            if placed is not None:
                return placed
        raise ValueError(
            f"could not place {self.cfg.n_defects} defects {self.min_sep:.0f} px apart inside a "
            f"{self.cfg.size} px frame; use fewer defects or a larger frame"
        )

    def _place_all(self, rng: np.random.Generator, classes: np.ndarray, scan0: Scan) -> np.ndarray | None:
        """One attempt at placing every defect in turn; ``None`` when one finds no room."""
        placed: list[np.ndarray] = []
        for c in classes:
            p = self._place_one(rng, int(c), scan0, np.array(placed).reshape(-1, 2))
            if p is None:
                return None
            placed.append(p)
        return np.array(placed)

    def _place_one(self, rng: np.random.Generator, c: int, scan0: Scan, others: np.ndarray) -> np.ndarray | None:
        """A random allowed home of a new defect of class ``c`` in frame 0, or ``None`` after many tries."""
        lo, hi = self.box
        for _ in range(_PLACEMENT_TRIES):
            x, y = rng.uniform(lo, hi, 2)
            p = self.lattice.home(np.array(scan0.to_specimen(x, y)), c, -1)
            if self._allowed(p, scan0, others):
                return p
        return None

    # ------------------------------------------------------------------ one frame to the next

    def _step(self, rng: np.random.Generator, i: int, cur: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Move every defect from frame ``i - 1`` (positions ``cur``, updated in place; ``classes``) to
        frame ``i``; return the classes of frame ``i``."""
        scan = self._scan(i)
        n = cur.shape[0]
        u = rng.random(n)
        nxt = np.minimum((u[:, None] >= self.cum[classes.astype(np.intp)]).sum(axis=1), len(DEFECT_CLASSES) - 1)
        for k in range(n):
            cur[k], nxt[k] = self._move(rng, scan, cur, k, int(classes[k]), int(nxt[k]))
        return nxt

    def _move(
        self, rng: np.random.Generator, scan: Scan, cur: np.ndarray, k: int, c_old: int, c_new: int
    ) -> tuple[np.ndarray, int]:
        """New position and class of defect ``k`` (class ``c_old``, drawn to become ``c_new``)."""
        old = cur[k].copy()
        others = np.delete(cur, k, axis=0)
        new = self._redraw(rng, scan, old, c_old, c_new, others)
        if new is not None:
            return new, c_new
        # stay: at the same place, or at the nearest allowed site of the new class
        new = self._stay(old, c_old, c_new, scan, others)
        if new is not None:
            return new, c_new
        # no room for the new class here (rare): the class change is dropped
        new = self._stay(old, c_old, c_old, scan, others)
        if new is None:  # the defects crowd each other out of every site near this one
            raise ValueError(f"defect {k} has no free site to move to: too many defects for the frame "
                             f"({cur.shape[0]} in {self.cfg.size} px); use fewer defects, a larger frame or less drift")
        return new, c_old

    def _redraw(
        self, rng: np.random.Generator, scan: Scan, old: np.ndarray, c_old: int, c_new: int, others: np.ndarray
    ) -> np.ndarray | None:
        """Draw this frame's move (redrawn while refused, up to ``_REDRAWS`` times); ``None`` if all are refused."""
        if c_old == DADA:
            sd = math.sqrt(2.0 * self.diffusion_px2[c_old])
            n_hops = 0
        else:
            sd = 0.0
            n_hops = int(rng.poisson(self.hop_rate[c_old]))
        moves = sd > 0 or n_hops > 0
        for _ in range(_REDRAWS if moves else 1):
            cand = self.lattice.home(self._candidate(rng, scan, old, sd, n_hops), c_new, c_old)
            if self._allowed(cand, scan, others):
                return cand
        return None

    def _candidate(self, rng: np.random.Generator, scan: Scan, old: np.ndarray, sd: float, n_hops: int) -> np.ndarray:
        """One draw of the moved position: a Gaussian step of ``sd`` per axis reflected off the frame edges
        (adatoms), ``n_hops`` hops to a random one of the six neighbouring sites, or no move."""
        if sd > 0:
            lo, hi = self.box
            cand = old + rng.normal(0.0, sd, 2)
            x, y = scan.to_image(cand[0], cand[1])
            return np.array(scan.to_specimen(_reflect(float(x), lo, hi), _reflect(float(y), lo, hi)))
        if n_hops:
            return old + self.hops[:, rng.integers(0, 6, n_hops)].sum(axis=1)
        return old

    # ------------------------------------------------------------------ constraints

    def _allowed(self, p: np.ndarray, scan: Scan, others: np.ndarray) -> bool:
        """Inside the margin (image coordinates of ``scan``'s frame) and ``MIN_SEPARATION_A`` from ``others``."""
        lo, hi = self.box
        x, y = scan.to_image(p[0], p[1])
        if not (lo - 1e-9 <= x <= hi + 1e-9 and lo - 1e-9 <= y <= hi + 1e-9):
            return False
        return others.size == 0 or float(np.min(np.sum((others - p) ** 2, axis=1))) >= self.min_sep**2 - 1e-9

    def _stay(self, old: np.ndarray, c_old: int, c_new: int, scan: Scan, others: np.ndarray) -> np.ndarray | None:
        """The position of a defect whose every move was refused: ``old`` if the class stays and it is
        allowed there, else the nearest allowed place for the new class (the box moves with the drift);
        ``None`` if there is none nearby."""
        if c_new == c_old and self._allowed(old, scan, others):
            return old
        lo, hi = self.box
        x, y = scan.to_image(old[0], old[1])
        clipped = np.array(scan.to_specimen(min(max(float(x), lo), hi), min(max(float(y), lo), hi)))
        if c_new == DADA and c_old == DADA:
            return clipped if self._allowed(clipped, scan, others) else None
        # nearby sites of the new class (hollow sites for a new adatom), nearest first
        sites = self.lattice.sites_near(clipped, c_new)
        for j in range(sites.shape[1]):
            if self._allowed(sites[:, j], scan, others):
                return sites[:, j]
        return None
