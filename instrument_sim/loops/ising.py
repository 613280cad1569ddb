"""Glauber dynamics of the RB-RF Ising model: quenched disorder, checkerboard Monte Carlo, switching loops."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from scanlens.protocol.messages import Axis

from .sweep import DEFAULT_AXIS, SWEEPS_PER_STEP, axis_sampling, field_ramp

TEMPERATURE: float = 1.0  # k_B T, the unit of every energy and field here
LATTICE: int = 16  # L: spins per grain = L * L
GRAINS: int = 16  # independent lattices (grains) under the tip, averaged into one pixel's loop
CHUNK: int = 512  # lattices simulated together (keeps the working set in cache)


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
    left, weight = axis_sampling(axis, ramp)
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
