"""The field sweep of a loop measurement: the ramp of every Monte-Carlo sweep and its sampling on an axis."""

from __future__ import annotations

import numpy as np

from scanlens.protocol.messages import Axis

H_MAX: float = 12.0  # amplitude of the field sweep (k_B T per dipole)
DEFAULT_AXIS: Axis = Axis(size=64, offset=-H_MAX, scale=2 * H_MAX / 63, units="a.u.")
SWEEPS_PER_STEP: int = 1  # Monte-Carlo sweeps per DEFAULT_AXIS step: the field moves scale / 1 per sweep

_AXIS_TOL = 1e-6


def field_ramp(sweeps_per_step: int = SWEEPS_PER_STEP) -> np.ndarray:
    """Field of every sweep of one branch, ``-H_MAX .. +H_MAX`` in steps of ``DEFAULT_AXIS.scale / sweeps_per_step``."""
    if sweeps_per_step < 1:
        raise ValueError("sweeps_per_step must be >= 1")
    n = (DEFAULT_AXIS.size - 1) * sweeps_per_step
    return np.linspace(-H_MAX, H_MAX, n + 1)


def axis_fields(axis: Axis) -> np.ndarray:
    """Field value of every channel of ``axis`` (float64)."""
    return axis.offset + axis.scale * np.arange(axis.size, dtype=np.float64)


def axis_sampling(axis: Axis, ramp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower ramp index and upper weight that linearly interpolate the ramp at the axis fields; raises
    ``ValueError`` for an axis that is not in "a.u." or leaves the sweep."""
    if axis.units != DEFAULT_AXIS.units:
        raise ValueError(f"axis units must be {DEFAULT_AXIS.units!r}, got {axis.units!r}")
    h = axis_fields(axis)
    if h.min() < -H_MAX - _AXIS_TOL or h.max() > H_MAX + _AXIS_TOL:
        raise ValueError(f"axis {axis.offset:g}..{axis.end:g} leaves the field sweep -{H_MAX:g}..{H_MAX:g}")
    pos = np.clip((h - ramp[0]) / (ramp[1] - ramp[0]), 0.0, ramp.size - 1)
    left = np.minimum(np.floor(pos).astype(np.intp), ramp.size - 2)
    return left, (pos - left).astype(np.float32)
