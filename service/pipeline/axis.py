"""Map an instrument's calibrated signal axis onto the axis a recognizer was trained on.

Real acquisition software sends its own channel count, offset and dispersion; nothing is fed to a
model blindly. When the incoming axis equals the model's, spectra pass through (cast to float32);
when it covers the model's range, every model channel is linearly interpolated from the two
neighbouring incoming channels; otherwise the scan is refused with both ranges in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol.messages import Axis

#: Units we convert between, as (dimension, factor to the base unit).
_UNITS: dict[str, tuple[str, float]] = {
    "meV": ("energy", 1e-3), "eV": ("energy", 1.0), "keV": ("energy", 1e3),
    "Hz": ("frequency", 1.0), "kHz": ("frequency", 1e3), "MHz": ("frequency", 1e6),
    "pm": ("length", 1e-12), "Å": ("length", 1e-10), "A": ("length", 1e-10), "nm": ("length", 1e-9),
    "um": ("length", 1e-6), "µm": ("length", 1e-6),
    "V": ("voltage", 1.0), "mV": ("voltage", 1e-3),
    "T": ("field", 1.0), "a.u.": ("arbitrary", 1.0), "index": ("index", 1.0),
}


class AxisError(ValueError):
    """The incoming axis cannot be mapped onto the model's."""


def _describe(axis: Axis) -> str:
    return f"{axis.offset:g}–{axis.end:g} {axis.units} ({axis.size} channels of {axis.scale:g})"


def unit_factor(src: str, dst: str) -> float:
    """How many ``dst`` one ``src`` is (1 for equal units); AxisError for unknown or incompatible units."""
    if src == dst:
        return 1.0
    a, b = _UNITS.get(src), _UNITS.get(dst)
    if a is None or b is None or a[0] != b[0]:
        raise AxisError(f"units {src!r} cannot be converted to the model's {dst!r}")
    return a[1] / b[1]


def length_factor(src: str, dst: str) -> float:
    """``unit_factor`` for lengths only (pixel sizes)."""
    if _UNITS.get(src, ("?",))[0] != "length" or _UNITS.get(dst, ("?",))[0] != "length":
        raise AxisError(f"{src!r} to {dst!r} is not a conversion between lengths (pm, Å, nm, um)")
    return unit_factor(src, dst)


def convert(axis: Axis, units: str) -> Axis:
    """The same axis expressed in ``units``; AxisError for unknown or incompatible units."""
    if axis.units == units:
        return axis
    if not axis.calibrated:
        raise AxisError(f"the scan's axis is uncalibrated (units \"\"); this recognizer needs an axis in {units!r} "
                        "or units that convert to it")
    try:
        factor = unit_factor(axis.units, units)
    except AxisError:
        raise AxisError(f"axis units {axis.units!r} cannot be converted to the model's {units!r}") from None
    return Axis(size=axis.size, offset=axis.offset * factor, scale=axis.scale * factor, units=units)


@dataclass(frozen=True)
class AxisMap:
    """How to turn spectra on ``source`` into spectra on ``target``; ``apply`` does it."""

    source: Axis
    target: Axis
    left: np.ndarray | None  # int index of the lower neighbour per target channel; None = identity
    weight: np.ndarray | None  # float32 weight of the upper neighbour

    @classmethod
    def build(cls, source: Axis, target: Axis) -> AxisMap:
        src = convert(source, target.units)
        tol = 1e-6 * max(src.scale, target.scale)
        if (src.size == target.size and abs(src.offset - target.offset) <= tol
                and abs(src.scale - target.scale) <= 1e-9 * target.scale):
            return cls(source, target, None, None)
        if src.offset > target.offset + tol or src.end < target.end - tol:
            raise AxisError(
                f"incoming axis {_describe(source)} does not cover the model axis {_describe(target)}")
        if src.size < 2:
            raise AxisError("incoming axis has a single channel; cannot interpolate")
        positions = (target.offset + np.arange(target.size) * target.scale - src.offset) / src.scale
        positions = np.clip(positions, 0.0, src.size - 1)
        left = np.minimum(np.floor(positions).astype(np.intp), src.size - 2)
        weight = (positions - left).astype(np.float32)
        return cls(source, target, left, weight)

    @property
    def identity(self) -> bool:
        return self.left is None

    def apply(self, spectra: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[n, source.size, ...]`` (any wire dtype) -> float32 ``[n, target.size, ...]``, into ``out``
        if given. Trailing axes (components) are interpolated independently."""
        if out is None:
            out = np.empty((spectra.shape[0], self.target.size, *spectra.shape[2:]), dtype=np.float32)
        if self.left is None:
            np.copyto(out, spectra, casting="unsafe")
            return out
        lower = spectra[:, self.left]
        upper = spectra[:, self.left + 1]
        weight = self.weight.reshape(-1, *([1] * (spectra.ndim - 2)))
        # out = lower + w * (upper - lower), in float32 without extra temporaries
        np.subtract(upper, lower, out=out, dtype=np.float32, casting="unsafe")
        out *= weight
        out += lower
        return out
