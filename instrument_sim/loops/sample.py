"""A simulated ferroelectric film (:class:`LoopsSample`): parameter maps, region map, its loops row by row."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from os import PathLike

import numpy as np

from scanlens.protocol.messages import Axis

from .config import LoopsConfig
from .ising import simulate_loops
from .parallel import process_pool
from .truth import write_ground_truth

log = logging.getLogger(__package__)  # "scanlens.sim.loops", as before the package was split


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], corr_px: float) -> np.ndarray:
    """Zero-mean, unit-rms 2-D random field with a Gaussian correlation of ``corr_px`` (not periodic)."""
    pad = int(np.ceil(3 * corr_px))
    big = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    white = rng.standard_normal(big)
    ky = np.fft.fftfreq(big[0])[:, None]
    kx = np.fft.rfftfreq(big[1])[None, :]
    kernel = np.exp(-0.5 * (2 * np.pi * corr_px) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, big)[pad : pad + shape[0], pad : pad + shape[1]]
    field -= field.mean()
    rms = float(np.sqrt(np.mean(field**2)))
    return field / rms if rms > 0 else field


def _patchwork(rng: np.random.Generator, shape: tuple[int, int], corr_px: float, fraction: float) -> np.ndarray:
    """Smooth indicator in [0, 1], above one half on ``fraction`` of the scan, with soft edges a few pixels wide."""
    field = _smooth_field(rng, shape, corr_px)
    return 1.0 / (1.0 + np.exp(-(field - np.quantile(field, 1.0 - fraction)) / 0.12))


def _row_loops(args: tuple[np.ndarray, np.ndarray, np.ndarray, Axis, int, int, int, int, int]) -> np.ndarray:
    """Noise-free loops of one scan row; row ``r`` of seed ``s`` draws from ``SeedSequence(s, spawn_key=(2, r))``."""
    j0, dj, dh, axis, seed, row, lattice, grains, sweeps = args
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, row)))
    return simulate_loops(j0, dj, dh, axis=axis, rng=rng, lattice=lattice, grains=grains, sweeps_per_step=sweeps)


class LoopsSample:
    """A simulated ferroelectric film: ground-truth (J0, dJ, dh) maps and its noisy switching loops.

    The noise-free loops of a row are simulated on first use (about 0.2 s a row on one core with the
    defaults) and kept, or all at once by :meth:`precompute` on several processes (the 64 x 64 demo
    film: about 7 s on 2 processes); every row has its own random stream, so ``line(row)`` is the same
    for the same (seed, row) whatever the order.
    """

    def __init__(self, cfg: LoopsConfig = LoopsConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
        shape = (cfg.rows, cfg.cols)
        # J0: a gentle gradient across the film plus slow wandering, stretched over j0_range.
        angle = rng.uniform(0.0, 2 * np.pi)
        yy, xx = np.mgrid[0 : cfg.rows, 0 : cfg.cols].astype(np.float64)
        ramp = np.cos(angle) * xx / max(cfg.cols, 2) + np.sin(angle) * yy / max(cfg.rows, 2)
        ramp = (ramp - ramp.mean()) / (ramp.std() + 1e-12)
        wander = _smooth_field(rng, shape, 2.0 * cfg.region_px)
        j0 = 0.6 * ramp + 0.8 * wander
        lo, hi = cfg.j0_range
        j0 = lo + (hi - lo) * (j0 - j0.min()) / max(float(np.ptp(j0)), 1e-12)
        # Independent patchworks of random-bond and random-field regions; each strong level varies a little.
        bond = _patchwork(rng, shape, cfg.region_px, cfg.bond_fraction)
        field = _patchwork(rng, shape, cfg.region_px, cfg.field_fraction)
        vary_b = 0.92 + 0.08 * np.tanh(_smooth_field(rng, shape, cfg.region_px))
        vary_f = 0.92 + 0.08 * np.tanh(_smooth_field(rng, shape, cfg.region_px))
        (dj_lo, dj_hi), (dh_lo, dh_hi) = cfg.dJ_levels, cfg.dh_levels
        dj = dj_lo + (dj_hi * vary_b - dj_lo).clip(0.0) * bond
        dh = dh_lo + (dh_hi * vary_f - dh_lo).clip(0.0) * field
        self.params: dict[str, np.ndarray] = {
            "J0": j0.astype(np.float32),
            "dJ": dj.astype(np.float32),
            "dh": dh.astype(np.float32),
        }
        #: 0 clean, 1 random-bond, 2 random-field, 3 mixed (which patchworks exceed one half)
        self.region: np.ndarray = ((bond > 0.5).astype(np.uint8) + 2 * (field > 0.5).astype(np.uint8))
        self._loops: dict[int, np.ndarray] = {}

    def _row_job(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Axis, int, int, int, int, int]:
        cfg = self.cfg
        return (self.params["J0"][row], self.params["dJ"][row], self.params["dh"][row], cfg.axis, cfg.seed, row,
                cfg.lattice, cfg.grains, cfg.sweeps_per_step)

    def expected_line(self, row: int) -> np.ndarray:
        """Noise-free loops ``[cols, axis.size, 2]`` float32 of scan row ``row``."""
        self._check_row(row)
        if row not in self._loops:
            t0 = time.perf_counter()
            self._loops[row] = _row_loops(self._row_job(row))
            log.debug("row %d simulated in %.2f s", row, time.perf_counter() - t0)
        return self._loops[row]

    def precompute(self, workers: int = 2, pool: Executor | None = None) -> float:
        """Simulate every row not yet simulated on ``workers`` processes (or ``pool``); return the seconds taken.

        Small scans (under 1024 pixels) run in this process: starting workers would cost more."""
        t0 = time.perf_counter()
        todo = [r for r in range(self.cfg.rows) if r not in self._loops]
        jobs = [self._row_job(r) for r in todo]
        if pool is not None:
            results: Iterable[np.ndarray] = pool.map(_row_loops, jobs)
        elif workers <= 1 or len(todo) * self.cfg.cols < 1024:
            results = map(_row_loops, jobs)
        else:
            with process_pool(min(workers, len(todo))) as own:
                results = list(own.map(_row_loops, jobs))
        for r, loops in zip(todo, results):
            self._loops[r] = loops
        seconds = time.perf_counter() - t0
        log.info("%d rows simulated in %.1f s", len(todo), seconds)
        return seconds

    def line(self, row: int) -> np.ndarray:
        """Measured loops ``[cols, axis.size, 2]`` float32 of scan row ``row`` (with measurement noise)."""
        clean = self.expected_line(row)
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(1, row)))
        noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(self.cfg.noise)
        return clean + noise

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write the parameter maps, region map, names, components, axis and config to an ``.npz`` file."""
        write_ground_truth(path, self.cfg, self.params, self.region)

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.cfg.rows:
            raise IndexError(f"row {row} outside 0..{self.cfg.rows - 1}")
