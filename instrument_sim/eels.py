"""EELS physics of an STO / LSMO / BFO oxide heterostructure: reference spectra, the sample, noisy scan lines.

Pure numpy, no sockets, no torch. The three reference spectra are analytic functions of energy loss
(counts per eV per unit dose, normalised to unit integral over 0-128 eV), so they can be evaluated on
any energy axis and at any energy shift:

* low loss, 5-35 eV: a Drude-like bulk plasmon per phase (STO 28.5 eV, LSMO 23.5 eV, BFO 26.0 eV)
  on top of interband transitions and shallow semi-core edges (Sr N2,3 ~20 eV, La O2,3 ~18 eV,
  Bi O4,5 24.4/26.9 eV);
* core loss, 35-125 eV: a power-law background ``A * E**-r`` (the plasmon's own E**-3 tail adds to
  it) and M2,3 edges of the transition metals as rounded sawtooth edges with a delayed maximum
  (Ti 35 eV, Mn 47 eV, Fe 53.5 eV), the La N4,5 pre-peaks and giant resonance at 99-115 eV and the
  weak Bi O2,3 edge at 92.6 eV.

The sample is a layer stack grown along the row direction (STO substrate, then alternating LSMO and
BFO layers) with intermixed interfaces (error-function profiles) and correlated lateral roughness.
A pixel's expected spectrum is the linear mixture ``S = dose * sum_i a_i w_i(E - shift)``; the
detector adds Poisson counting noise and Gaussian read noise.

Optionally (``EELSConfig.unknown_region``) a precipitate of a fourth phase that is *not* in the
reference set, LaAlO3 ("LAO", :data:`UNKNOWN_PHASE`), sits in an elliptical region crossing the layers.
Its spectrum is analytic like the others: La O2,3 and a 26.8 eV plasmon in the low loss, a wide gap
(5.6 eV), no transition-metal M2,3 edge but the Al L2,3 edge (76.5 eV, delayed maximum) and Al L1
(118 eV) with the La N4,5 edges in the core loss. The 4-phase mixture of a pixel is
``(1 - u) * a_layer + u * LAO``: ``EELSSample.unknown`` holds ``u`` and ``EELSSample.abundance`` the
known phases' share ``(1 - u) * a_layer``, so ``abundance.sum(-1) + unknown == 1`` everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from typing import Any, Sequence

import numpy as np

from scanlens.protocol.messages import Axis

PHASES: tuple[str, ...] = ("STO", "LSMO", "BFO")
#: The phase of the optional unknown region; deliberately not in :data:`PHASES` (the reference set).
UNKNOWN_PHASE: str = "LAO"
#: Every phase the simulator can render: the reference set, then the unknown phase.
ALL_PHASES: tuple[str, ...] = (*PHASES, UNKNOWN_PHASE)
DEFAULT_AXIS: Axis = Axis(size=512, offset=0.0, scale=0.25, units="eV")

#: Energy window over which every reference spectrum integrates to 1 (so ``dose`` is total counts).
NORM_RANGE_EV: tuple[float, float] = (0.0, 128.0)

#: Below this many expected counts a channel gets an exact Poisson draw; above, the Gaussian limit
#: N(lam, lam + read_noise**2) is used (indistinguishable at these counts and 3x faster).
EXACT_POISSON_BELOW: float = 40.0

# Layer stack from the substrate (row 0) upwards: (phase index, nominal thickness in px at 128 rows).
_STACK: tuple[tuple[int, float], ...] = ((0, 30), (1, 14), (2, 24), (1, 9), (2, 18), (1, 13), (2, 20))
_THICKNESS_JITTER = 0.12  # relative random variation of each layer's thickness per seed
_ROUGHNESS_CORR_PX = 10.0  # lateral correlation length of the interface roughness
_ROUGHNESS_SHARED = 0.6  # fraction of the roughness variance that is conformal (shared by interfaces)

# Unknown region: a tilted ellipse, long axis along the growth (row) direction so that it crosses layers.
_UNKNOWN_AREA = (0.07, 0.12)  # fraction of the scan inside the ellipse
_UNKNOWN_ASPECT = (1.3, 2.0)  # long / short semi-axis
_UNKNOWN_TILT_RAD = 0.4  # |tilt| of the long axis from the row direction, at most
_UNKNOWN_CENTER = ((0.45, 0.65), (0.3, 0.7))  # range of the centre, as fractions of (rows, cols)
#: Abundance of the unknown phase in the core of its region: the precipitate does not span the whole
#: thickness of the lamella, so a little of the host layer stays in projection (and ``phase`` stays the
#: host's).
UNKNOWN_PEAK: float = 0.95


# --------------------------------------------------------------------------- analytic line shapes


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _gauss(e: np.ndarray, center: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((e - center) / sigma) ** 2)


def _plasmon(e: np.ndarray, ep: float, gamma: float) -> np.ndarray:
    """Drude energy-loss function Im(-1/eps), scaled to 1 at ``ep``; tail falls as E**-3."""
    return e * gamma**2 * ep / ((e**2 - ep**2) ** 2 + (e * gamma) ** 2)


def _edge(e: np.ndarray, onset: float, rise: float, r: float, width: float = 0.6) -> np.ndarray:
    """Ionisation edge: a smooth onset, a maximum delayed by ~``rise`` eV, then a power-law decay.

    ``rise`` of ~1 eV gives a hydrogenic sawtooth, several eV the delayed maximum of M2,3 edges.
    """
    ramp = width * _softplus((e - onset) / width)  # smooth max(E - onset, 0)
    return (1.0 - np.exp(-ramp / rise)) * (np.maximum(e, onset) / onset) ** (-r)


def _background(e: np.ndarray, r: float, start: float = 30.0) -> np.ndarray:
    """Power law (E / 40 eV)**-r of the core-loss region, faded in below ``start``."""
    return _sigmoid((e - start) / 2.5) * (np.maximum(e, 1.0) / 40.0) ** (-r)


def _gap(e: np.ndarray, eg: float) -> np.ndarray:
    return _sigmoid((e - eg) / 0.35)


def _sto(e: np.ndarray) -> np.ndarray:
    low = (
        0.30 * _gauss(e, 6.5, 1.0)  # O 2p -> Ti 3d t2g
        + 0.34 * _gauss(e, 10.0, 1.5)  # O 2p -> Ti 3d eg
        + 0.28 * _gauss(e, 14.5, 2.0)  # O 2p -> Sr 4d
        + 0.26 * _gauss(e, 20.3, 1.4)  # Sr N2,3 (4p)
        + 1.00 * _plasmon(e, 28.5, 9.0)
    )
    core = (
        0.26 * _background(e, 2.8)
        + 0.34 * _edge(e, 35.0, 5.0, 2.2)  # Ti M2,3, delayed maximum ~45-47 eV
        + 0.02 * _edge(e, 60.0, 1.0, 2.5)  # Ti M1
    )
    return _gap(e, 3.3) * (low + core)


def _lsmo(e: np.ndarray) -> np.ndarray:
    low = (
        0.22 * _gauss(e, 5.8, 1.8)  # O 2p -> Mn 3d (metallic, no clear gap)
        + 0.22 * _gauss(e, 10.8, 2.0)
        + 0.36 * _gauss(e, 18.3, 1.2)  # La O2,3 (5p)
        + 0.09 * _gauss(e, 20.3, 1.4)  # Sr N2,3
        + 1.00 * _plasmon(e, 23.5, 10.0)
    )
    core = (
        0.22 * _background(e, 3.0)
        + 0.26 * _edge(e, 47.0, 2.5, 2.6)  # Mn M2,3
        + 0.030 * _gauss(e, 99.2, 0.6)  # La N4,5 pre-peaks
        + 0.040 * _gauss(e, 101.8, 0.8)
        + 0.055 * _gauss(e, 114.0, 6.0)  # La N4,5 giant resonance (4d -> 4f)
        + 0.020 * _edge(e, 99.0, 2.0, 2.0)
    )
    return _gap(e, 1.5) * (low + core)


def _bfo(e: np.ndarray) -> np.ndarray:
    low = (
        0.30 * _gauss(e, 5.4, 1.2)  # O 2p -> Fe 3d
        + 0.24 * _gauss(e, 8.6, 1.8)
        + 0.24 * _gauss(e, 13.0, 2.5)  # O 2p -> Bi 6p
        + 0.30 * _edge(e, 24.4, 4.0, 3.0)  # Bi O5 (5d5/2), delayed maximum
        + 0.20 * _edge(e, 26.9, 4.0, 3.0)  # Bi O4 (5d3/2)
        + 1.00 * _plasmon(e, 26.0, 11.0)
    )
    core = (
        0.24 * _background(e, 2.9)
        + 0.24 * _edge(e, 53.5, 2.5, 2.6)  # Fe M2,3
        + 0.012 * _edge(e, 92.6, 6.0, 2.0)  # Bi O3 (5p3/2)
    )
    return _gap(e, 2.7) * (low + core)


def _lao(e: np.ndarray) -> np.ndarray:
    """LaAlO3, the phase the reference set does not know: no Ti / Mn / Fe edge, but Al L2,3 and more La."""
    low = (
        0.18 * _gauss(e, 8.2, 1.6)  # O 2p -> La 5d across the wide (5.6 eV) gap
        + 0.24 * _gauss(e, 12.8, 2.2)  # O 2p -> Al 3s3p / La 4f
        + 0.42 * _gauss(e, 18.6, 1.2)  # La O3 (5p3/2)
        + 0.20 * _gauss(e, 21.4, 1.3)  # La O2 (5p1/2)
        + 1.00 * _plasmon(e, 26.8, 9.5)
    )
    core = (
        0.24 * _background(e, 3.0)
        + 0.075 * _edge(e, 76.5, 3.0, 2.4)  # Al L2,3 (octahedral Al in an oxide), maximum ~80 eV
        + 0.015 * _edge(e, 118.0, 1.5, 2.5)  # Al L1
        + 0.045 * _gauss(e, 99.2, 0.6)  # La N4,5 pre-peaks
        + 0.060 * _gauss(e, 101.8, 0.8)
        + 0.080 * _gauss(e, 114.0, 6.0)  # La N4,5 giant resonance
        + 0.030 * _edge(e, 99.0, 2.0, 2.0)
    )
    return _gap(e, 5.6) * (low + core)


_SHAPES = {"STO": _sto, "LSMO": _lsmo, "BFO": _bfo, UNKNOWN_PHASE: _lao}


@lru_cache(maxsize=None)
def _norm(phase: str) -> float:
    lo, hi = NORM_RANGE_EV
    e = np.linspace(lo, hi, 25_601)
    y = _SHAPES[phase](e)
    return float(np.sum(0.5 * (y[1:] + y[:-1])) * (e[1] - e[0]))


def reference_spectrum(phase: str, energy_eV: np.ndarray) -> np.ndarray:
    """Noise-free spectrum of one pure phase, counts per eV per unit dose (float64, > 0 above ~3 eV).

    ``phase`` is one of :data:`ALL_PHASES`: the reference set :data:`PHASES` or :data:`UNKNOWN_PHASE`.
    """
    if phase not in _SHAPES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {ALL_PHASES}")
    e = np.asarray(energy_eV, dtype=np.float64)
    return _SHAPES[phase](e) / _norm(phase)


def reference_spectra(energy_eV: np.ndarray, phases: Sequence[str] = PHASES) -> np.ndarray:
    """The reference spectra of ``phases`` stacked as ``[len(phases), n]`` float64."""
    e = np.asarray(energy_eV, dtype=np.float64)
    return np.stack([reference_spectrum(p, e) for p in phases])


def axis_energies(axis: Axis) -> np.ndarray:
    """Channel positions of ``axis`` (float64)."""
    return axis.offset + axis.scale * np.arange(axis.size, dtype=np.float64)


# --------------------------------------------------------------------------- detector


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
    abundance: np.ndarray, axis: Axis, dose: float | np.ndarray, shift_eV: float | np.ndarray = 0.0
) -> np.ndarray:
    """Noise-free counts ``dose * scale * sum_i a_i w_i(E - shift)`` on ``axis`` for ``[n, 3]`` abundances.

    ``[n, 4]`` abundances add the unknown phase as a fourth column (order :data:`ALL_PHASES`).
    ``dose`` and ``shift_eV`` are scalars or per-spectrum ``[n]``; spectra sharing a shift share one
    evaluation of the references, so quantise random shifts (e.g. to 0.01 eV) when rendering many.
    """
    a = np.asarray(abundance, dtype=np.float64)
    n = a.shape[0]
    if a.ndim != 2 or a.shape[1] not in (len(PHASES), len(ALL_PHASES)):
        raise ValueError(f"abundance must be [n, {len(PHASES)}] or [n, {len(ALL_PHASES)}], got {a.shape}")
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
) -> np.ndarray:
    """Noisy counts ``[n, axis.size]`` float32 for ``[n, 3]`` (or ``[n, 4]``, see :func:`expected_counts`)
    abundances (same physics as a scan)."""
    lam = expected_counts(abundance, axis, dose, shift_eV)
    rn = np.asarray(read_noise, dtype=np.float32)
    return add_detector_noise(lam, rn[:, None] if rn.ndim else rn, rng)


# --------------------------------------------------------------------------- sample


@dataclass(frozen=True)
class EELSConfig:
    """Everything that defines a simulated spectrum image; equal configs give identical data."""

    rows: int = 128
    cols: int = 128
    axis: Axis = DEFAULT_AXIS
    dose: float = 1.0e5  # total expected counts of one spectrum (0-128 eV)
    read_noise: float = 3.0  # Gaussian read noise, counts rms per channel
    drift_eV: float = 0.0  # peak-to-peak slow energy drift of the zero point over the scan (0 = off)
    interface_width_px: float = 2.5  # erf length: a = (1 + erf(d / w)) / 2, 10-90 % over 1.8 w
    roughness_px: float = 1.5  # rms lateral displacement of the interfaces
    seed: int = 0
    unknown_region: bool = False  # a region of LAO (not in the reference set) crossing the layers

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("rows and cols must be >= 1")
        if not self.dose > 0 or self.read_noise < 0 or self.drift_eV < 0:
            raise ValueError("dose must be > 0, read_noise and drift_eV >= 0")
        if not self.interface_width_px > 0 or self.roughness_px < 0:
            raise ValueError("interface_width_px must be > 0 and roughness_px >= 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["axis"] = self.axis.model_dump()
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EELSConfig:
        fields: dict[str, Any] = json.loads(text)
        fields["axis"] = Axis(**fields["axis"])
        return cls(**fields)  # files written before ``unknown_region`` existed get its default (off)


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7); numpy has none."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def _smooth_noise(rng: np.random.Generator, n: int, corr_px: float) -> np.ndarray:
    """Zero-mean, unit-rms random curve of length ``n`` with a Gaussian correlation of ``corr_px``."""
    white = rng.standard_normal(n)
    k = np.fft.rfftfreq(n)
    curve = np.fft.irfft(np.fft.rfft(white) * np.exp(-0.5 * (2 * np.pi * k * corr_px) ** 2), n)
    curve -= curve.mean()
    rms = float(np.sqrt(np.mean(curve**2)))
    return curve / rms if rms > 0 else curve


def _unknown_region(cfg: EELSConfig) -> np.ndarray:
    """Abundance ``[rows, cols]`` (float64) of the unknown phase: a tilted ellipse of random size, aspect
    and position, :data:`UNKNOWN_PEAK` inside, blending into the host over an erf edge of
    ``interface_width_px`` (the same intermixing as the layer interfaces).

    Drawn from its own random stream, so switching the region on changes nothing else in the sample.
    """
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2,)))
    area = rng.uniform(*_UNKNOWN_AREA)
    aspect = rng.uniform(*_UNKNOWN_ASPECT)
    tilt = rng.uniform(-_UNKNOWN_TILT_RAD, _UNKNOWN_TILT_RAD)
    y0 = rng.uniform(*_UNKNOWN_CENTER[0]) * cfg.rows
    x0 = rng.uniform(*_UNKNOWN_CENTER[1]) * cfg.cols
    # Semi-axes in pixels (long one along the rows), scaled with the scan so the area fraction holds.
    a_px = math.sqrt(area * aspect / math.pi) * cfg.rows
    b_px = math.sqrt(area / (aspect * math.pi)) * cfg.cols
    y = np.arange(cfg.rows, dtype=np.float64)[:, None] - y0
    x = np.arange(cfg.cols, dtype=np.float64)[None, :] - x0
    along = y * math.cos(tilt) + x * math.sin(tilt)
    across = -y * math.sin(tilt) + x * math.cos(tilt)
    rho = np.sqrt((along / a_px) ** 2 + (across / b_px) ** 2)  # 1 on the boundary
    # First-order signed distance to the boundary in pixels: (rho - 1) / |grad rho|.
    grad = np.sqrt((along / a_px**2) ** 2 + (across / b_px**2) ** 2) / np.maximum(rho, 1e-12)
    dist = (rho - 1.0) / np.maximum(grad, 1e-12)
    return UNKNOWN_PEAK * 0.5 * (1.0 - _erf(dist / cfg.interface_width_px))


class EELSSample:
    """A simulated STO / LSMO / BFO heterostructure: ground-truth maps and its scan lines on demand.

    Ground truth: ``abundance`` ``[rows, cols, 3]`` of the known phases (:data:`PHASES`), ``phase`` its
    argmax, and ``unknown`` ``[rows, cols]`` the abundance of :data:`UNKNOWN_PHASE` (zeros unless
    ``cfg.unknown_region``); ``abundance.sum(-1) + unknown == 1``.
    """

    def __init__(self, cfg: EELSConfig = EELSConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
        self.energy = axis_energies(cfg.axis)

        # Layer boundaries (rows) from the jittered stack, rescaled to the scan height.
        thick = np.array([t for _, t in _STACK], dtype=np.float64)
        thick *= 1.0 + _THICKNESS_JITTER * rng.uniform(-1.0, 1.0, thick.size)
        thick *= cfg.rows / thick.sum()
        self.layer_phases = np.array([p for p, _ in _STACK], dtype=np.uint8)
        nominal = np.cumsum(thick)[:-1] - 0.5  # interface between layer j and j+1

        # Interface positions per column: nominal + correlated lateral roughness, kept in order.
        shared = _smooth_noise(rng, cfg.cols, _ROUGHNESS_CORR_PX)
        y_if = np.empty((nominal.size, cfg.cols))
        for j, y0 in enumerate(nominal):
            own = _smooth_noise(rng, cfg.cols, _ROUGHNESS_CORR_PX)
            disp = math.sqrt(_ROUGHNESS_SHARED) * shared + math.sqrt(1 - _ROUGHNESS_SHARED) * own
            y_if[j] = y0 + cfg.roughness_px * disp
        y_if = np.maximum.accumulate(y_if, axis=0)
        self.interfaces_px = y_if  # [n_interfaces, cols]

        # Error-function intermixing: fraction above interface j is H_j; layer j holds H_{j-1} - H_j.
        rows = np.arange(cfg.rows, dtype=np.float64)[None, :, None]
        h = 0.5 * (1.0 + _erf((rows - y_if[:, None, :]) / cfg.interface_width_px))  # [n_if, rows, cols]
        ones = np.ones((1, cfg.rows, cfg.cols))
        zeros = np.zeros((1, cfg.rows, cfg.cols))
        upper = np.concatenate([ones, h])
        lower = np.concatenate([h, zeros])
        layer_frac = np.clip(upper - lower, 0.0, None)  # [n_layers, rows, cols]
        abundance = np.zeros((cfg.rows, cfg.cols, len(PHASES)))
        for j, p in enumerate(self.layer_phases):
            abundance[..., p] += layer_frac[j]
        abundance /= abundance.sum(axis=-1, keepdims=True)
        if cfg.unknown_region:
            # 4-phase mixture (1 - u) * a_layer + u * LAO; ``abundance`` keeps the known phases' share,
            # so its argmax (``phase``) stays the host layer's phase (u <= UNKNOWN_PEAK < 1).
            unknown = _unknown_region(cfg)
            abundance *= (1.0 - unknown)[..., None]
        else:
            unknown = np.zeros((cfg.rows, cfg.cols))
        self.abundance: np.ndarray = abundance.astype(np.float32)
        self.unknown: np.ndarray = unknown.astype(np.float32)
        self.phase: np.ndarray = np.argmax(self.abundance, axis=-1).astype(np.uint8)

        # Slow energy drift of the zero point (thermal drift of the spectrometer): a ramp with a slow
        # wobble over the scan, scaled to an exact peak-to-peak of drift_eV and centred on zero.
        if cfg.drift_eV > 0 and cfg.rows > 1:
            t = np.linspace(0.0, 1.0, cfg.rows)
            freq, phase0 = rng.uniform(0.5, 1.5), rng.uniform(0.0, 2 * np.pi)
            curve = t + 0.15 * np.sin(2 * np.pi * freq * t + phase0)
            curve = (curve - curve.min()) / (curve.max() - curve.min())
            self.shift_eV: np.ndarray = (curve - 0.5) * cfg.drift_eV
        else:
            self.shift_eV = np.zeros(cfg.rows)

        # Reference counts per unit abundance on the scan axis, for the fast no-drift path (the unknown
        # phase's row is appended only when the region is on).
        self._phases = ALL_PHASES if cfg.unknown_region else PHASES
        self._counts_ref = (reference_spectra(self.energy, self._phases) * (cfg.dose * cfg.axis.scale)).astype(
            np.float32
        )

    def expected_line(self, row: int) -> np.ndarray:
        """Noise-free expected counts ``[cols, axis.size]`` float32 of scan row ``row``."""
        self._check_row(row)
        shift = float(self.shift_eV[row])
        if shift == 0.0:
            ref = self._counts_ref
        else:
            ref = (
                reference_spectra(self.energy - shift, self._phases) * (self.cfg.dose * self.cfg.axis.scale)
            ).astype(np.float32)
        if not self.cfg.unknown_region:
            return self.abundance[row] @ ref
        k = len(PHASES)
        return self.abundance[row] @ ref[:k] + self.unknown[row][:, None] * ref[k]

    def line(self, row: int) -> np.ndarray:
        """Noisy counts ``[cols, axis.size]`` float32 of scan row ``row``; the same for the same (seed, row)."""
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(1, row)))
        return add_detector_noise(self.expected_line(row), self.cfg.read_noise, rng)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write phase, abundance, unknown-phase abundance and name, phase names, axis, energy shift and
        config to an ``.npz`` file."""
        np.savez_compressed(
            path,
            phase=self.phase,
            abundance=self.abundance,
            unknown=self.unknown,
            unknown_phase=np.array(UNKNOWN_PHASE),
            phase_names=np.array(PHASES),
            axis=np.array(self.cfg.axis.model_dump_json()),
            shift_eV=self.shift_eV,
            config=np.array(self.cfg.to_json()),
        )

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.cfg.rows:
            raise IndexError(f"row {row} outside 0..{self.cfg.rows - 1}")


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what ``EELSSample.save_ground_truth`` wrote: arrays plus ``axis`` (Axis) and ``config`` (EELSConfig).

    ``unknown`` (float32 ``[rows, cols]``) is zeros for files written before the unknown region existed.
    """
    with np.load(path, allow_pickle=False) as data:
        phase = data["phase"]
        return {
            "phase": phase,
            "abundance": data["abundance"],
            "unknown": data["unknown"] if "unknown" in data.files else np.zeros(phase.shape, np.float32),
            "unknown_phase": str(data["unknown_phase"]) if "unknown_phase" in data.files else UNKNOWN_PHASE,
            "phase_names": tuple(str(s) for s in data["phase_names"]),
            "axis": Axis.model_validate_json(str(data["axis"])),
            "shift_eV": data["shift_eV"],
            "config": EELSConfig.from_json(str(data["config"])),
        }
