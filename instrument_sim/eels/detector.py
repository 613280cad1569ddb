"""The spectrometer: expected counts of phase mixtures on an axis, Poisson and read noise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanlens.protocol.messages import Axis

from .spectra import ALL_PHASES, PHASES, axis_energies, reference_spectra

#: Below this many expected counts a channel gets an exact Poisson draw; above, the Gaussian limit
#: N(lam, lam + read_noise**2) is used (indistinguishable at these counts and 3x faster).
EXACT_POISSON_BELOW: float = 40.0


def add_detector_noise(
    expected: np.ndarray, read_noise: float | np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Counting (Poisson) plus Gaussian read noise on expected counts; returns float32 of the same shape.

    ``read_noise`` is a scalar or broadcasts against ``expected`` (e.g. ``[n, 1]``).
    """
    lam = np.maximum(np.asarray(expected, dtype=np.float32), 0.0)
    rn2 = np.square(np.asarray(read_noise, dtype=np.float32))
    z = rng.standard_normal(lam.shape, dtype=np.float32)
    out = lam + np.sqrt(lam + rn2) * z
    small = lam < EXACT_POISSON_BELOW
    if small.any():
        rn = np.sqrt(np.broadcast_to(rn2, lam.shape)[small]) if rn2.ndim else np.sqrt(rn2)
        out[small] = rng.poisson(lam[small]).astype(np.float32) + rn * z[small]
    return out


def expected_counts(
    abundance: np.ndarray, axis: Axis, dose: float | np.ndarray, shift_eV: float | np.ndarray = 0.0,
    *, phases: Sequence[str] | None = None,
) -> np.ndarray:
    """Noise-free counts ``dose * scale * sum_i a_i w_i(E - shift)`` on ``axis`` for ``[n, 3]`` abundances.

    ``[n, 4]`` abundances add the unknown phase as a fourth column (order :data:`ALL_PHASES`). ``phases``
    names the columns instead (e.g. :data:`CTO_PHASES`, the ``"cto"`` sample's), one per column.
    ``dose`` and ``shift_eV`` are scalars or per-spectrum ``[n]``; spectra sharing a shift share one
    evaluation of the references, so quantise random shifts (e.g. to 0.01 eV) when rendering many.
    """
    a = np.asarray(abundance, dtype=np.float64)
    n = a.shape[0]
    if phases is not None:
        phases = tuple(phases)
        if a.ndim != 2 or a.shape[1] != len(phases):
            raise ValueError(f"abundance must be [n, {len(phases)}] for phases {phases}, got {a.shape}")
    elif a.ndim != 2 or a.shape[1] not in (len(PHASES), len(ALL_PHASES)):
        raise ValueError(f"abundance must be [n, {len(PHASES)}] or [n, {len(ALL_PHASES)}], got {a.shape}")
    else:
        phases = PHASES if a.shape[1] == len(PHASES) else ALL_PHASES
    e = axis_energies(axis)
    shifts = np.broadcast_to(np.asarray(shift_eV, dtype=np.float64), (n,))
    uniq, inverse = np.unique(shifts, return_inverse=True)
    out = np.empty((n, axis.size), dtype=np.float64)
    for k, s in enumerate(uniq):
        sel = inverse == k
        out[sel] = a[sel] @ reference_spectra(e - s, phases)
    dose_arr = np.asarray(dose, dtype=np.float64)
    scale = dose_arr[:, None] if dose_arr.ndim else dose_arr
    return out * (scale * axis.scale)


def simulate_spectra(
    abundance: np.ndarray,
    axis: Axis,
    *,
    dose: float | np.ndarray,
    read_noise: float | np.ndarray,
    rng: np.random.Generator,
    shift_eV: float | np.ndarray = 0.0,
    phases: Sequence[str] | None = None,
) -> np.ndarray:
    """Noisy counts ``[n, axis.size]`` float32 for ``[n, 3]`` (or ``[n, 4]``, or columns named by
    ``phases``, see :func:`expected_counts`) abundances (same physics as a scan)."""
    lam = expected_counts(abundance, axis, dose, shift_eV, phases=phases)
    rn = np.asarray(read_noise, dtype=np.float32)
    return add_detector_noise(lam, rn[:, None] if rn.ndim else rn, rng)
