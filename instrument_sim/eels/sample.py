"""A simulated oxide heterostructure (:class:`EELSSample`): layer stack, unknown region, scan lines.

Two stacks (``EELSConfig.sample``): ``"oxide"``, STO / LSMO / BFO, the shipped models' training world,
and ``"cto"``, CaTiO3 films on an NdGaO3 substrate with a reduced, intermixed interface layer of its own
at every CTO / NGO interface, none of whose phases the shipped models know.
"""

from __future__ import annotations

import math
from os import PathLike

import numpy as np

from .config import EELSConfig
from .detector import add_detector_noise
from .spectra import SAMPLE_PHASES, UNKNOWN_PHASE, axis_energies, reference_spectra
from .truth import write_ground_truth

# Layer stack from the substrate (row 0) upwards: (phase index, nominal thickness in px at 128 rows).
_STACK: tuple[tuple[int, float], ...] = ((0, 30), (1, 14), (2, 24), (1, 9), (2, 18), (1, 13), (2, 20))
# The "cto" stack (indices into CTO_PHASES: 0 CTO, 1 interface, 2 NGO): an NGO substrate and two CTO films
# with an NGO spacer, an interface layer of ~6 px (2.4 nm, about 6 unit cells at 0.4 nm/px) at each of the
# four CTO / NGO interfaces. Thick enough that the interface phase is the majority in its core despite the
# erf intermixing of ``interface_width_px`` (2.5 px by default) on both sides; about a fifth of the pixels.
_CTO_STACK: tuple[tuple[int, float], ...] = (
    (2, 26), (1, 6), (0, 22), (1, 6), (2, 16), (1, 6), (0, 22), (1, 6), (2, 18)
)
#: The layer stack of each sample (``EELSConfig.sample``), phase indices into its ``SAMPLE_PHASES``.
STACKS: dict[str, tuple[tuple[int, float], ...]] = {"oxide": _STACK, "cto": _CTO_STACK}
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
    """A simulated oxide heterostructure: ground-truth maps and its scan lines on demand.

    ``phases`` are the sample's phases (``SAMPLE_PHASES[cfg.sample]``: :data:`PHASES` for ``"oxide"``,
    :data:`CTO_PHASES` for ``"cto"``). Ground truth: ``abundance`` ``[rows, cols, 3]`` of those phases,
    ``phase`` its argmax (an index into ``phases``), and ``unknown`` ``[rows, cols]`` the abundance of
    :data:`UNKNOWN_PHASE` (zeros unless ``cfg.unknown_region``); ``abundance.sum(-1) + unknown == 1``.
    The ``"oxide"`` sample is drawn exactly as before ``sample`` existed (same stack, same draws).
    """

    def __init__(self, cfg: EELSConfig = EELSConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
        self.energy = axis_energies(cfg.axis)
        self.phases: tuple[str, ...] = SAMPLE_PHASES[cfg.sample]
        stack = STACKS[cfg.sample]

        # Layer boundaries (rows) from the jittered stack, rescaled to the scan height.
        thick = np.array([t for _, t in stack], dtype=np.float64)
        thick *= 1.0 + _THICKNESS_JITTER * rng.uniform(-1.0, 1.0, thick.size)
        thick *= cfg.rows / thick.sum()
        self.layer_phases = np.array([p for p, _ in stack], dtype=np.uint8)
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
        abundance = np.zeros((cfg.rows, cfg.cols, len(self.phases)))
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
        self._phases = (*self.phases, UNKNOWN_PHASE) if cfg.unknown_region else self.phases
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
        k = len(self.phases)
        return self.abundance[row] @ ref[:k] + self.unknown[row][:, None] * ref[k]

    def line(self, row: int) -> np.ndarray:
        """Noisy counts ``[cols, axis.size]`` float32 of scan row ``row``; the same for the same (seed, row)."""
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(1, row)))
        return add_detector_noise(self.expected_line(row), self.cfg.read_noise, rng)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write phase, abundance, unknown-phase abundance and name, phase names, axis, energy shift and
        config to an ``.npz`` file."""
        write_ground_truth(path, self.cfg, phase=self.phase, abundance=self.abundance, unknown=self.unknown,
                           shift_eV=self.shift_eV, phase_names=self.phases)

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.cfg.rows:
            raise IndexError(f"row {row} outside 0..{self.cfg.rows - 1}")
