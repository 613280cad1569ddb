"""Ferroelectric switching loops from the random-bond random-field Ising model: the physics, the sample, scan lines.

Pure numpy, no sockets, no torch. Model of Ovchinnikov et al., PRL 103, 157203 (2009) and Kumar et al.,
PRB 84, 024203 (2011): a grain is an ``L x L`` square lattice of Ising dipoles ``S_i = +-1`` (periodic
boundaries) with energy

    E = - sum_<ij> J_ij S_i S_j - sum_i (h_i + H) S_i,   J_ij = J0 + dJ * xi_ij,   h_i = dh * eta_i,

(nearest-neighbour bonds ``<ij>``, ferromagnetic for ``J_ij > 0``; the papers write the same Hamiltonian
as ``H = sum J_ij S_i S_j + sum (h_i + H) S_i`` with the opposite sign convention). ``xi`` and ``eta``
are standard normal and quenched: drawn once per lattice. Each lattice gets an exactly Gaussian
histogram of bonds and of fields (the normal quantiles, randomly arranged on the lattice: stratified
sampling), so lattices with the same (J0, dJ, dh) differ only by the arrangement of their disorder,
which lowers the lattice-to-lattice scatter of the loops without changing the model. The tip probes
``GRAINS`` = 16 independent grains of ``LATTICE`` = 16 (4096 dipoles): a pixel's loop is their mean.
With fewer dipoles a loop is dominated by the few avalanches of its own disorder realisation and the
three parameters cannot be told apart (with one 16 x 16 lattice the held-out R² of dh was ~0.6).

Units: energies, fields and the three parameters are in units of ``k_B T`` at the fixed temperature
``T = TEMPERATURE = 1`` (the clean 2-D Ising ferromagnet orders below ``T_c = 2.269 J0``, so the whole
range J0 >= 0.6 is ordered, at T / T_c = 0.14 .. 0.7); the field ``H`` is an energy per dipole in the
same units, labelled "a.u." on the wire. Results hardly depended on the temperature (T / J0 halved or
doubled); what matters is the ratio of disorder to coupling.

Dynamics: Glauber (heat-bath) single-spin dynamics with checkerboard updates, the two sublattices in
turn, vectorised over many independent lattices. A spin takes ``+1`` with probability
``1 / (1 + exp(-2 h_loc / T))`` whatever its current value (``h_loc`` = the local field
``sum_j J_ij S_j + h_i + H``), implemented as ``S = sign(h_loc + T/2 * l)`` with ``l`` standard logistic.

Measurement: starting from the saturated state ``S = -1`` at ``-H_MAX`` the field is ramped linearly
to ``+H_MAX`` (ascending branch, "up") and back (descending branch, "down") at a fixed rate of
``DEFAULT_AXIS.scale / sweeps_per_step`` (0.38 k_B T) per Monte-Carlo sweep, 128 sweeps a loop. The
mean polarisation after every sweep, linearly interpolated at the field values of the requested axis,
gives the two branches; the loop's physics therefore does not depend on how densely the instrument
samples it. Speed (this machine, one process): about 300 pixel loops/s, i.e. 4 800 16 x 16 lattices/s
or 6-7 ns per spin update; two processes reach about 380 loops/s (:func:`simulate_loops_parallel`).

Identifiability: a loop fixes J0 (the coercive field scale), the total disorder and whether it sits on
bonds or fields, but a weak kind of disorder under a strong one of the other kind leaves almost no
trace (dh below ~1 k_BT under dJ ~ 3 k_BT, dJ below ~1 under dh ~ 6). The demo film is therefore built
from clearly weak or strong levels of each kind (``LoopsConfig``), over a wide smooth range of J0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from statistics import NormalDist
from typing import Any

import numpy as np

from scanlens.protocol.messages import Axis

log = logging.getLogger(__name__)

PARAMS: tuple[str, ...] = ("J0", "dJ", "dh")
#: J0, dJ and dh are energies in units of the thermal energy k_B T of the fixed temperature.
PARAM_UNITS: tuple[str, ...] = ("k_BT", "k_BT", "k_BT")
COMPONENTS: tuple[str, ...] = ("up", "down")

TEMPERATURE: float = 1.0  # k_B T, the unit of every energy and field here
H_MAX: float = 12.0  # amplitude of the field sweep (k_B T per dipole)
DEFAULT_AXIS: Axis = Axis(size=64, offset=-H_MAX, scale=2 * H_MAX / 63, units="a.u.")
LATTICE: int = 16  # L: spins per grain = L * L
GRAINS: int = 16  # independent lattices (grains) under the tip, averaged into one pixel's loop
SWEEPS_PER_STEP: int = 1  # Monte-Carlo sweeps per DEFAULT_AXIS step: the field moves scale / 1 per sweep
CHUNK: int = 512  # lattices simulated together (keeps the working set in cache)
BLOCK: int = 128  # loops per independent random stream in simulate_loops_parallel

_AXIS_TOL = 1e-6


# --------------------------------------------------------------------------- lattice geometry


@dataclass(frozen=True)
class _Geometry:
    """Checkerboard split of an ``L x L`` periodic lattice with ``2 L^2`` bonds.

    Sites ``(y, x)`` with ``x + y`` even form sublattice A, the others B; ``nb_a[d]`` holds, for every A
    site, the index (within B) of its neighbour in direction ``d`` (right, left, down, up) and
    ``bond_a[d]`` the index of that bond (horizontal bond of site ``i`` = ``i``, vertical = ``L^2 + i``).
    """

    size: int
    sites_a: np.ndarray
    sites_b: np.ndarray
    nb_a: np.ndarray  # [4, L^2/2] indices into B
    nb_b: np.ndarray  # [4, L^2/2] indices into A
    bond_a: np.ndarray  # [4, L^2/2]
    bond_b: np.ndarray  # [4, L^2/2]


@lru_cache(maxsize=8)
def _geometry(size: int) -> _Geometry:
    if size < 4 or size % 2:
        raise ValueError(f"lattice size must be even and >= 4, got {size}")
    n = size * size
    ys, xs = np.divmod(np.arange(n), size)
    sites_a = np.flatnonzero((xs + ys) % 2 == 0)
    sites_b = np.flatnonzero((xs + ys) % 2 == 1)
    position = np.empty(n, dtype=np.intp)
    position[sites_a] = np.arange(sites_a.size)
    position[sites_b] = np.arange(sites_b.size)

    def neighbours(sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, x = np.divmod(sites, size)
        xr, xl = (x + 1) % size, (x - 1) % size
        yd, yu = (y + 1) % size, (y - 1) % size
        nb = np.stack([y * size + xr, y * size + xl, yd * size + x, yu * size + x])
        bond = np.stack([y * size + x, y * size + xl, n + y * size + x, n + yu * size + x])
        return position[nb], bond

    nb_a, bond_a = neighbours(sites_a)
    nb_b, bond_b = neighbours(sites_b)
    return _Geometry(size, sites_a, sites_b, nb_a, nb_b, bond_a, bond_b)


@lru_cache(maxsize=8)
def _normal_quantiles(m: int) -> np.ndarray:
    """The ``m`` quantiles ``Phi^-1((k + 1/2) / m)`` of the standard normal (mean 0, variance ~1)."""
    inv = NormalDist().inv_cdf
    return np.array([inv((k + 0.5) / m) for k in range(m)], dtype=np.float64)


def _stratified_normal(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """``[m, n]``: every column is the ``m`` normal quantiles in an independent random order."""
    return rng.permuted(np.repeat(_normal_quantiles(m)[:, None], n, axis=1), axis=0)


# --------------------------------------------------------------------------- field protocol


def field_ramp(sweeps_per_step: int = SWEEPS_PER_STEP) -> np.ndarray:
    """Field of every sweep of one branch, ``-H_MAX .. +H_MAX`` in steps of ``DEFAULT_AXIS.scale / sweeps_per_step``."""
    if sweeps_per_step < 1:
        raise ValueError("sweeps_per_step must be >= 1")
    n = (DEFAULT_AXIS.size - 1) * sweeps_per_step
    return np.linspace(-H_MAX, H_MAX, n + 1)


def axis_fields(axis: Axis) -> np.ndarray:
    """Field value of every channel of ``axis`` (float64)."""
    return axis.offset + axis.scale * np.arange(axis.size, dtype=np.float64)


def _sampling(axis: Axis, ramp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower ramp index and upper weight that linearly interpolate the ramp at the axis fields."""
    if axis.units != DEFAULT_AXIS.units:
        raise ValueError(f"axis units must be {DEFAULT_AXIS.units!r}, got {axis.units!r}")
    h = axis_fields(axis)
    if h.min() < -H_MAX - _AXIS_TOL or h.max() > H_MAX + _AXIS_TOL:
        raise ValueError(f"axis {axis.offset:g}..{axis.end:g} leaves the field sweep -{H_MAX:g}..{H_MAX:g}")
    pos = np.clip((h - ramp[0]) / (ramp[1] - ramp[0]), 0.0, ramp.size - 1)
    left = np.minimum(np.floor(pos).astype(np.intp), ramp.size - 2)
    return left, (pos - left).astype(np.float32)


# --------------------------------------------------------------------------- Monte Carlo


def _simulate_chunk(
    j0: np.ndarray, dj: np.ndarray, dh: np.ndarray, ramp: np.ndarray, record: np.ndarray,
    rng: np.random.Generator, size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Polarisation after the recorded sweeps of both branches: ``([n_rec, n], [n_rec, n])``, up and down."""
    geo = _geometry(size)
    n = j0.size
    half = size * size // 2
    beta2 = 2.0 / TEMPERATURE  # compare 2 h_loc / T with standard logistic noise
    bonds = beta2 * (j0 + dj * _stratified_normal(rng, 2 * size * size, n))
    fields = beta2 * dh * _stratified_normal(rng, size * size, n)
    jb_a = bonds[geo.bond_a].astype(np.float32)  # [4, half, n]
    jb_b = bonds[geo.bond_b].astype(np.float32)
    h_a = fields[geo.sites_a].astype(np.float32)
    h_b = fields[geo.sites_b].astype(np.float32)
    spin_a = -np.ones((half, n), dtype=np.float32)
    spin_b = -np.ones((half, n), dtype=np.float32)
    loc = np.empty((half, n), dtype=np.float32)
    gathered = np.empty((half, n), dtype=np.float32)
    noise = np.empty((2, half, n), dtype=np.float32)
    logistic = np.empty((2, half, n), dtype=np.float32)
    wanted = np.zeros(ramp.size, dtype=bool)
    wanted[record] = True
    out = np.empty((2, record.size, n), dtype=np.float32)
    norm = np.float32(1.0 / (size * size))
    sublattices = ((spin_a, jb_a, geo.nb_a, h_a, spin_b), (spin_b, jb_b, geo.nb_b, h_b, spin_a))
    with np.errstate(divide="ignore"):
        for branch, fields_h in enumerate((ramp, ramp[::-1])):
            for step, field in enumerate(fields_h):
                # standard logistic noise l = log(u / (1 - u)) for both sublattices; u = 0 gives -inf (a certain -1)
                rng.random(out=noise, dtype=np.float32)
                np.subtract(np.float32(1.0), noise, out=logistic)
                np.divide(noise, logistic, out=logistic)
                np.log(logistic, out=logistic)
                h_ext = np.float32(beta2 * field)
                for s, (spin, jb, nb, hs, other) in enumerate(sublattices):
                    np.add(hs, h_ext, out=loc)
                    loc += logistic[s]
                    for d in range(4):
                        np.take(other, nb[d], axis=0, out=gathered)
                        gathered *= jb[d]
                        loc += gathered
                    np.copysign(np.float32(1.0), loc, out=spin)
                idx = step if branch == 0 else ramp.size - 1 - step
                if wanted[idx]:
                    tot = spin_a.sum(axis=0, dtype=np.float32)
                    tot += spin_b.sum(axis=0, dtype=np.float32)
                    out[branch, np.searchsorted(record, idx)] = tot * norm
    return out[0], out[1]


def simulate_loops(
    J0: np.ndarray | float,
    dJ: np.ndarray | float,
    dh: np.ndarray | float,
    *,
    axis: Axis = DEFAULT_AXIS,
    rng: np.random.Generator,
    lattice: int = LATTICE,
    grains: int = GRAINS,
    sweeps_per_step: int = SWEEPS_PER_STEP,
) -> np.ndarray:
    """Switching loops: float32 ``[n, axis.size, 2]``, components ``("up", "down")``.

    ``J0``, ``dJ`` and ``dh`` (k_B T) broadcast to ``[n]``. Every loop is the mean polarisation of
    ``grains`` independent ``lattice x lattice`` lattices, each with its own quenched disorder, in
    ``[-1, 1]``, sampled at the field values of ``axis`` (units "a.u." = k_B T, inside
    ``-H_MAX .. H_MAX``); no measurement noise.
    """
    j0, dj, h = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(J0, dJ, dh))
    j0, dj, h = j0.reshape(-1), dj.reshape(-1), h.reshape(-1)
    if np.any(dj < 0) or np.any(h < 0) or not (np.all(np.isfinite(j0)) and np.all(np.isfinite(dj))
                                                 and np.all(np.isfinite(h))):
        raise ValueError("J0 must be finite, dJ and dh finite and >= 0")
    if grains < 1:
        raise ValueError("grains must be >= 1")
    j0, dj, h = np.repeat(j0, grains), np.repeat(dj, grains), np.repeat(h, grains)
    ramp = field_ramp(sweeps_per_step)
    left, weight = _sampling(axis, ramp)
    record = np.unique(np.concatenate([left, left + 1]))
    lo = np.searchsorted(record, left)
    hi = np.searchsorted(record, left + 1)
    w = weight[:, None]
    n = j0.size
    out = np.empty((n, axis.size, 2), dtype=np.float32)
    for start in range(0, n, CHUNK):
        sl = slice(start, start + CHUNK)
        up, down = _simulate_chunk(j0[sl], dj[sl], h[sl], ramp, record, rng, lattice)
        for c, branch in enumerate((up, down)):
            out[sl, :, c] = (branch[lo] * (1 - w) + branch[hi] * w).T
    return out.reshape(-1, grains, axis.size, 2).mean(axis=1, dtype=np.float32)


def process_pool(workers: int = 2) -> ProcessPoolExecutor:
    """Worker processes for the simulations (started with "spawn": never fork a process holding torch's threads)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _block_loops(args: tuple[np.ndarray, np.ndarray, np.ndarray, Axis, int, int, int, int, int]) -> np.ndarray:
    j0, dj, dh, axis, seed, block, lattice, grains, sweeps = args
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    return simulate_loops(j0, dj, dh, axis=axis, rng=rng, lattice=lattice, grains=grains, sweeps_per_step=sweeps)


def simulate_loops_parallel(
    J0: np.ndarray | float,
    dJ: np.ndarray | float,
    dh: np.ndarray | float,
    *,
    axis: Axis = DEFAULT_AXIS,
    seed: int,
    workers: int = 2,
    lattice: int = LATTICE,
    grains: int = GRAINS,
    sweeps_per_step: int = SWEEPS_PER_STEP,
    progress: Callable[[int, int], None] | None = None,
    pool: Executor | None = None,
) -> np.ndarray:
    """:func:`simulate_loops` for many loops on ``workers`` processes; the same result for any ``workers``.

    Loops are cut into blocks of ``BLOCK``, block ``k`` drawing from ``SeedSequence(seed, spawn_key=(k,))``.
    ``progress(done, total)`` is called after every block, in order. ``pool`` (e.g. from
    :func:`process_pool`) is used instead of starting ``workers`` processes.
    """
    j0, dj, h = (np.asarray(v, dtype=np.float64).reshape(-1) for v in np.broadcast_arrays(J0, dJ, dh))
    jobs = [
        (j0[i : i + BLOCK], dj[i : i + BLOCK], h[i : i + BLOCK], axis, seed, k, lattice, grains, sweeps_per_step)
        for k, i in enumerate(range(0, j0.size, BLOCK))
    ]
    parts: list[np.ndarray] = []

    def collect(results: Iterable[np.ndarray]) -> None:
        for part in results:
            parts.append(part)
            if progress is not None:
                progress(len(parts), len(jobs))

    if pool is not None:
        collect(pool.map(_block_loops, jobs))
    elif workers <= 1 or len(jobs) <= 1:
        collect(map(_block_loops, jobs))
    else:
        with process_pool(min(workers, len(jobs))) as own:
            collect(own.map(_block_loops, jobs))
    if not parts:
        return np.empty((0, axis.size, 2), dtype=np.float32)
    return np.concatenate(parts)


# --------------------------------------------------------------------------- sample


@dataclass(frozen=True)
class LoopsConfig:
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

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("rows and cols must be >= 1")
        if self.noise < 0 or self.seed < 0:
            raise ValueError("noise and seed must be >= 0")
        for name in ("j0_range", "dJ_levels", "dh_levels"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be 0 <= low <= high")
        if not self.region_px > 0:
            raise ValueError("region_px must be > 0")
        if not (0 < self.bond_fraction < 1 and 0 < self.field_fraction < 1):
            raise ValueError("bond_fraction and field_fraction must lie in (0, 1)")
        _sampling(self.axis, field_ramp(self.sweeps_per_step))  # the axis must lie inside the sweep

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["axis"] = self.axis.model_dump()
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoopsConfig:
        fields: dict[str, Any] = json.loads(text)
        fields["axis"] = Axis(**fields["axis"])
        for name in ("j0_range", "dJ_levels", "dh_levels"):
            fields[name] = tuple(fields[name])
        return cls(**fields)


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
        np.savez_compressed(
            path,
            **{f"param_{k}": v for k, v in self.params.items()},
            region=self.region,
            param_names=np.array(PARAMS),
            param_units=np.array(PARAM_UNITS),
            components=np.array(COMPONENTS),
            axis=np.array(self.cfg.axis.model_dump_json()),
            config=np.array(self.cfg.to_json()),
        )

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.cfg.rows:
            raise IndexError(f"row {row} outside 0..{self.cfg.rows - 1}")


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what ``LoopsSample.save_ground_truth`` wrote: ``params`` (dict of maps), ``region``, names, ``axis``, ``config``."""
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(s) for s in data["param_names"])
        return {
            "params": {k: data[f"param_{k}"] for k in names},
            "region": data["region"],
            "param_names": names,
            "param_units": tuple(str(s) for s in data["param_units"]),
            "components": tuple(str(s) for s in data["components"]),
            "axis": Axis.model_validate_json(str(data["axis"])),
            "config": LoopsConfig.from_json(str(data["config"])),
        }


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
