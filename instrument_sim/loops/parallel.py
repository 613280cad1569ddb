"""Many switching loops on several processes, with the same result for any number of them."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np

from scanlens.protocol.messages import Axis

from .ising import GRAINS, LATTICE, simulate_loops
from .sweep import DEFAULT_AXIS, SWEEPS_PER_STEP

BLOCK: int = 128  # loops per independent random stream in simulate_loops_parallel


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
