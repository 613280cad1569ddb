"""Band-excitation PFM of a bacteria mixture: sample geometry, per-pixel resonance parameters, noisy BE scan lines.

Pure numpy, no sockets, no torch. Follows Nikiforov et al., Nanotechnology 20, 405708 (2009):
*Micrococcus lysodeikticus* (Gram-positive cocci) and *Pseudomonas fluorescens* (Gram-negative rods)
on a substrate, imaged by band-excitation piezoresponse force microscopy. At every pixel the tip is
driven over a band of frequencies around the contact resonance and the response is recorded as
amplitude and phase per frequency bin.

**Response.** Each pixel is a damped simple harmonic oscillator (SHO)::

    H(f) = A0 * f0**2 / (f0**2 - f**2 + 1j * f * f0 / Q) * exp(1j * phi0)
    A(f) = |H(f)| = A0 f0**2 / sqrt((f0**2 - f**2)**2 + (f f0 / Q)**2)
    phi(f) = phi0 - atan2(f f0 / Q, f0**2 - f**2)           (continuous: phi0 -> phi0 - pi)

so the amplitude peaks at f0 (exactly at ``f0 * sqrt(1 - 1 / (2 Q**2))``, less than 0.07 % or
0.25 kHz below f0 for Q >= 20) with height ``A0 * Q`` and a full width at half power (amplitude
``peak / sqrt(2)``) of ``f0 / Q``, and the phase crosses ``phi0 - pi/2`` at f0. Amplitudes are in
arbitrary units (a.u.; A0 is the quasi-static, f -> 0 response). The band (``DEFAULT_AXIS``) is
310-389.375 kHz in 128 bins of 0.625 kHz around the ~350 kHz contact resonance.

**Noise.** Complex Gaussian noise of rms ``noise`` (a.u.; ``noise / sqrt(2)`` in each of the real and
imaginary parts, independent per bin) is added to H; the line reports ``|H + n|`` and the phase
``phi(f) + arg(1 + n / H)``, i.e. the continuous branch that follows the oscillator's phase (no 2 pi
jumps inside the band, as acquisition software reports unwrapped BE phase). With the default noise
of 1.0 a.u. the resonance peak (A0 Q ~ 15-60 a.u.) has an SNR of 15-60; far off resonance the
response falls to a few a.u. and its phase is noisy.

**Parameters.** Each pixel has theta = (f0 kHz, ln Q, ln A0, phi0 rad). Per class a mean, plus a
shared "contact stiffness" factor ``s ~ N(0, 1)`` that moves all four parameters together (stiffer
contact: higher f0, Q and phase offset, smaller quasi-static amplitude A0), plus independent scatter:

======================== ======= ======= ======= ========
parameter                f0 kHz  Q       A0      phi0 rad
======================== ======= ======= ======= ========
background (mean)        352.0   70.0    0.40    0.00
M. lysodeikticus (mean)  349.6   86.4    0.60    0.12
P. fluorescens (mean)    347.2   51.1    0.35    0.24
stiffness, per unit s    +8.0    x1.42   x0.64   +0.20
cell-to-cell sd          0.8     3.5 %   4.5 %   0.020
pixel sd (within cell)   0.32    1.4 %   1.8 %   0.008
======================== ======= ======= ======= ========

The bacteria's means sit (-0.3, +0.6, -0.9, +0.6) and (-0.6, -0.9, +0.3, +1.2) stiffness-loadings
away from the substrate's: offsets with zero sum, i.e. orthogonal to the stiffness direction (in
loading units). The stiffness factor therefore spreads every class along the same direction and
each parameter's marginal distributions overlap heavily between classes (the best single threshold
on f0, Q, A0 or phi0 separates a pair of classes 58-81 % of the time, balanced), while the classes
lie on parallel sheets 13-20 cell-to-cell sds apart in the joint space: only combinations separate
them. Each cell draws its own ``s`` and scatter; the substrate's ``s`` and scatter are smooth random
fields (correlation length ``bg_corr_um``), so it varies slowly across the scan. Every pixel adds the
pixel scatter. f0 is kept inside 322-378 kHz and Q inside 20-200.

**Geometry.** Cells are spherocylinders (a coccus is one of zero length) placed at uniformly random
centres (cut by the frame edges), orientations uniform in [0, pi), non-overlapping with a gap of at
least ``min_gap_um``: cocci of diameter N(1.0, 0.08) um clipped to 0.8-1.2 um; rods of width
N(0.55, 0.04) um clipped to 0.45-0.7 um and length N(1.9, 0.25) um clipped to 2-4 widths. Numbers
are ``cocci_per_100um2`` and ``rods_per_100um2`` times the field area. At a cell's rim the tip
averages cell and substrate: the coverage ``w = (1 + tanh(d / edge_um)) / 2`` of the signed
distance ``d`` inside the outline blends the cell's parameters toward the local background ones
(linearly in f0, ln Q, ln A0, phi0). A pixel is labelled as the cell's class where ``w >= 0.5``
(its centre lies inside the outline), background elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from scanlens.protocol.messages import Axis

CLASSES: tuple[str, ...] = ("background", "M. lysodeikticus", "P. fluorescens")
COMPONENTS: tuple[str, ...] = ("amplitude", "phase")
DEFAULT_AXIS: Axis = Axis(size=128, offset=310.0, scale=0.625, units="kHz")

#: Names of the ground-truth parameter maps (``BEPFMSample.params``).
PARAM_NAMES: tuple[str, ...] = ("amplitude", "f0_kHz", "Q", "phase_rad")

# Parameters live in theta = (f0 kHz, ln Q, ln A0, phi0 rad). The shared "contact stiffness" loading
# per unit s, and the class means as offsets from the substrate in units of that loading, chosen with
# zero sum so that every class difference is orthogonal to the stiffness direction (in loading units).
_STIFFNESS = np.array([8.0, 0.35, -0.45, 0.20])
_BG_MEAN = np.array([352.0, math.log(70.0), math.log(0.40), 0.0])
_OFFSET_U = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],  # background (substrate)
        [-0.3, 0.6, -0.9, 0.6],  # M. lysodeikticus
        [-0.6, -0.9, 0.3, 1.2],  # P. fluorescens
    ]
)
_MEAN = _BG_MEAN + _OFFSET_U * _STIFFNESS
_CELL_SD = 0.10 * np.abs(_STIFFNESS)
_PIXEL_SD = 0.04 * np.abs(_STIFFNESS)
F0_RANGE_KHZ: tuple[float, float] = (322.0, 378.0)
Q_RANGE: tuple[float, float] = (20.0, 200.0)

# Cell shapes, micrometres: (mean, sd, lo, hi).
_COCCUS_DIAMETER = (1.0, 0.08, 0.8, 1.2)
_ROD_WIDTH = (0.55, 0.04, 0.45, 0.7)
_ROD_LENGTH = (1.9, 0.25)
_ROD_ASPECT = (2.0, 4.0)
_PLACEMENT_TRIES = 300


# --------------------------------------------------------------------------- oscillator


def axis_frequencies(axis: Axis) -> np.ndarray:
    """Channel positions of ``axis`` in kHz (float64)."""
    f = axis.offset + axis.scale * np.arange(axis.size, dtype=np.float64)
    scale = {"Hz": 1e-3, "kHz": 1.0, "MHz": 1e3}.get(axis.units)
    if scale is None:
        raise ValueError(f"axis units {axis.units!r} are not a frequency (Hz, kHz, MHz)")
    return f * scale


def sho_response(
    freq_kHz: np.ndarray, amplitude: np.ndarray, f0_kHz: np.ndarray, q: np.ndarray, phase_rad: np.ndarray
) -> np.ndarray:
    """Complex SHO response ``[n, len(freq)]`` (complex128) for per-pixel parameters of shape ``[n]``."""
    f = np.asarray(freq_kHz, dtype=np.float64)[None, :]
    f0 = np.asarray(f0_kHz, dtype=np.float64)[:, None]
    a0 = np.asarray(amplitude, dtype=np.float64)[:, None]
    qq = np.asarray(q, dtype=np.float64)[:, None]
    phi0 = np.asarray(phase_rad, dtype=np.float64)[:, None]
    return a0 * f0**2 * np.exp(1j * phi0) / (f0**2 - f**2 + 1j * f * f0 / qq)


def sho_amplitude_phase(
    freq_kHz: np.ndarray, amplitude: np.ndarray, f0_kHz: np.ndarray, q: np.ndarray, phase_rad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free amplitude and continuous phase ``[n, len(freq)]`` (float64) of the SHO."""
    f = np.asarray(freq_kHz, dtype=np.float64)[None, :]
    f0 = np.asarray(f0_kHz, dtype=np.float64)[:, None]
    a0 = np.asarray(amplitude, dtype=np.float64)[:, None]
    qq = np.asarray(q, dtype=np.float64)[:, None]
    phi0 = np.asarray(phase_rad, dtype=np.float64)[:, None]
    re, im = f0**2 - f**2, f * f0 / qq
    return a0 * f0**2 / np.hypot(re, im), phi0 - np.arctan2(im, re)


def measure(
    response: np.ndarray, phase_model: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Add complex Gaussian noise of rms ``noise`` to ``response`` and return float32 ``[..., 2]``
    (amplitude, phase); the phase is ``phase_model + arg(1 + n / H)``, continuous across the band."""
    h = np.asarray(response)
    return _measure(h.real, h.imag, np.asarray(phase_model, dtype=np.float64), noise, rng)


def _measure(
    h_re: np.ndarray, h_im: np.ndarray, phase_model: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    sigma = noise / math.sqrt(2.0)
    noise_ri = rng.standard_normal((2, *h_re.shape))
    noise_ri *= sigma
    z_re = noise_ri[0]
    z_re += h_re
    z_im = noise_ri[1]
    z_im += h_im
    out = np.empty((*h_re.shape, 2), dtype=np.float32)
    out[..., 0] = np.sqrt(z_re * z_re + z_im * z_im)
    # arg(z / h) = arg(z * conj(h))
    out[..., 1] = phase_model + np.arctan2(z_im * h_re - z_re * h_im, z_re * h_re + z_im * h_im)
    return out


def sample_parameters(
    rng: np.random.Generator, label: np.ndarray, stiffness: np.ndarray | None = None
) -> np.ndarray:
    """Cell-level parameters ``[n, 4]`` in (f0 kHz, ln Q, ln A0, phi0 rad) for class indices ``label``:
    class mean + stiffness loading * s + cell-to-cell scatter (s ~ N(0, 1) unless given)."""
    label = np.asarray(label, dtype=np.intp)
    n = label.size
    s = rng.standard_normal(n) if stiffness is None else np.asarray(stiffness, dtype=np.float64)
    return _MEAN[label] + s[:, None] * _STIFFNESS + rng.standard_normal((n, 4)) * _CELL_SD


def to_physical(theta: np.ndarray) -> dict[str, np.ndarray]:
    """(f0 kHz, ln Q, ln A0, phi0) ``[..., 4]`` -> the parameter maps, float32, with f0 and Q clipped."""
    return {
        "amplitude": np.exp(theta[..., 2]).astype(np.float32),
        "f0_kHz": np.clip(theta[..., 0], *F0_RANGE_KHZ).astype(np.float32),
        "Q": np.clip(np.exp(theta[..., 1]), *Q_RANGE).astype(np.float32),
        "phase_rad": theta[..., 3].astype(np.float32),
    }


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Cell:
    """One bacterium: a spherocylinder of axis ``2 * half_length_um`` and radius ``radius_um`` (um)."""

    klass: int  # index into CLASSES (1 or 2)
    x_um: float  # centre, along columns
    y_um: float  # centre, along rows
    angle_rad: float  # orientation of the long axis, from the column direction
    half_length_um: float  # half the length of the straight part (0 for a coccus)
    radius_um: float

    @property
    def length_um(self) -> float:
        return 2.0 * (self.half_length_um + self.radius_um)

    @property
    def width_um(self) -> float:
        return 2.0 * self.radius_um

    def segment(self) -> tuple[np.ndarray, np.ndarray]:
        d = np.array([math.cos(self.angle_rad), math.sin(self.angle_rad)]) * self.half_length_um
        c = np.array([self.x_um, self.y_um])
        return c - d, c + d

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance inside the outline (positive inside, negative outside), um."""
        p, q = self.segment()
        seg = q - p
        denom = float(seg @ seg)
        if denom == 0.0:
            t = np.zeros_like(x)
        else:
            t = np.clip(((x - p[0]) * seg[0] + (y - p[1]) * seg[1]) / denom, 0.0, 1.0)
        return self.radius_um - np.hypot(x - (p[0] + t * seg[0]), y - (p[1] + t * seg[1]))


def _point_segment(pt: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom == 0.0 else min(1.0, max(0.0, float((pt - a) @ ab) / denom))
    return float(np.linalg.norm(pt - (a + t * ab)))


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def segment_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Exact distance between two 2-D segments (0 where they cross)."""
    (p1, p2), (q1, q2) = a, b
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return 0.0
    return min(
        _point_segment(p1, q1, q2), _point_segment(p2, q1, q2), _point_segment(q1, p1, p2), _point_segment(q2, p1, p2)
    )


def _clipped_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], corr_px: float) -> np.ndarray:
    """Zero-mean, unit-rms 2-D random field with a Gaussian correlation of ``corr_px``."""
    white = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    filt = np.exp(-0.5 * (2 * np.pi * corr_px) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape)
    field -= field.mean()
    rms = float(np.sqrt(np.mean(field**2)))
    return field / rms if rms > 0 else field


# --------------------------------------------------------------------------- sample


@dataclass(frozen=True)
class BEPFMConfig:
    """Everything that defines a simulated BE-PFM scan; equal configs give identical data."""

    rows: int = 128
    cols: int = 128
    axis: Axis = DEFAULT_AXIS
    pixel_size_um: float = 0.1
    noise: float = 1.0  # rms of the complex measurement noise per frequency bin, a.u.
    cocci_per_100um2: float = 9.0
    rods_per_100um2: float = 8.0
    edge_um: float = 0.03  # tanh length of the tip's blend of cell and substrate at a cell's rim
    min_gap_um: float = 0.1  # smallest distance between two cell outlines
    bg_corr_um: float = 2.0  # correlation length of the substrate's slow variations
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("rows and cols must be >= 1")
        if not self.pixel_size_um > 0 or self.noise < 0:
            raise ValueError("pixel_size_um must be > 0 and noise >= 0")
        if self.cocci_per_100um2 < 0 or self.rods_per_100um2 < 0:
            raise ValueError("cell densities must be >= 0")
        if not self.edge_um > 0 or self.min_gap_um < 0 or not self.bg_corr_um > 0:
            raise ValueError("edge_um and bg_corr_um must be > 0, min_gap_um >= 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        axis_frequencies(self.axis)  # raises for non-frequency units

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["axis"] = self.axis.model_dump()
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BEPFMConfig:
        fields: dict[str, Any] = json.loads(text)
        fields["axis"] = Axis(**fields["axis"])
        return cls(**fields)


class BEPFMSample:
    """A simulated field of cocci and rods on a substrate: ground-truth maps and its BE scan lines on demand."""

    def __init__(self, cfg: BEPFMConfig = BEPFMConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
        self.freq_kHz = axis_frequencies(cfg.axis)
        self.cells: list[Cell] = self._place_cells(rng)

        rows, cols, px = cfg.rows, cfg.cols, cfg.pixel_size_um
        y_um = (np.arange(rows, dtype=np.float64) + 0.5) * px
        x_um = (np.arange(cols, dtype=np.float64) + 0.5) * px

        # Substrate: class mean + stiffness field + slowly varying scatter, all smooth over the scan.
        corr_px = cfg.bg_corr_um / px
        s_bg = _smooth_field(rng, (rows, cols), corr_px)
        theta = _MEAN[0] + s_bg[..., None] * _STIFFNESS
        for k in range(4):
            theta[..., k] += _CELL_SD[k] * _smooth_field(rng, (rows, cols), corr_px)

        # Cells: own parameters, blended toward the local substrate at the rim.
        cell_theta = sample_parameters(rng, np.array([c.klass for c in self.cells], dtype=np.intp))
        coverage = np.zeros((rows, cols))
        cell_id = np.full((rows, cols), -1, dtype=np.int32)
        reach = cfg.edge_um * 4.0
        for i, cell in enumerate(self.cells):
            ext = cell.half_length_um + cell.radius_um + reach
            r0 = max(0, int((cell.y_um - ext) / px) - 1)
            r1 = min(rows, int((cell.y_um + ext) / px) + 2)
            c0 = max(0, int((cell.x_um - ext) / px) - 1)
            c1 = min(cols, int((cell.x_um + ext) / px) + 2)
            if r0 >= r1 or c0 >= c1:
                continue
            d = cell.signed_distance(x_um[None, c0:c1], y_um[r0:r1, None])
            w = 0.5 * (1.0 + np.tanh(d / cfg.edge_um))
            box = (slice(r0, r1), slice(c0, c1))
            take = w > coverage[box]
            coverage[box] = np.where(take, w, coverage[box])
            cell_id[box] = np.where(take & (w >= 0.5), i, cell_id[box])
            blended = w[..., None] * cell_theta[i] + (1.0 - w[..., None]) * theta[box]
            theta[box] = np.where(take[..., None], blended, theta[box])
        theta += rng.standard_normal(theta.shape) * _PIXEL_SD

        klass = np.array([0] + [c.klass for c in self.cells], dtype=np.uint8)
        self.cell_id: np.ndarray = cell_id  # int32 [rows, cols], -1 on background
        self.coverage: np.ndarray = coverage.astype(np.float32)  # largest cell coverage w per pixel
        self.label: np.ndarray = klass[cell_id + 1]
        self.params: dict[str, np.ndarray] = to_physical(theta)

    def _place_cells(self, rng: np.random.Generator) -> list[Cell]:
        cfg = self.cfg
        width_um, height_um = cfg.cols * cfg.pixel_size_um, cfg.rows * cfg.pixel_size_um
        area = width_um * height_um / 100.0
        n_cocci = int(round(cfg.cocci_per_100um2 * area))
        n_rods = int(round(cfg.rods_per_100um2 * area))
        kinds = rng.permutation(np.array([1] * n_cocci + [2] * n_rods, dtype=np.intp))
        cells: list[Cell] = []
        segments: list[tuple[np.ndarray, np.ndarray]] = []
        for kind in kinds:
            if kind == 1:
                radius, half = 0.5 * _clipped_normal(rng, *_COCCUS_DIAMETER), 0.0
            else:
                width = _clipped_normal(rng, *_ROD_WIDTH)
                length = float(np.clip(rng.normal(*_ROD_LENGTH), _ROD_ASPECT[0] * width, _ROD_ASPECT[1] * width))
                radius, half = 0.5 * width, 0.5 * (length - width)
            angle = float(rng.uniform(0.0, math.pi))
            for _ in range(_PLACEMENT_TRIES):
                cell = Cell(int(kind), float(rng.uniform(0, width_um)), float(rng.uniform(0, height_um)),
                            angle, half, radius)
                seg = cell.segment()
                if all(
                    segment_distance(seg, other_seg) >= cell.radius_um + other.radius_um + cfg.min_gap_um
                    for other, other_seg in zip(cells, segments)
                ):
                    cells.append(cell)
                    segments.append(seg)
                    break
        return cells

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.cfg.rows:
            raise IndexError(f"row {row} outside 0..{self.cfg.rows - 1}")

    def _row_params(self, row: int) -> tuple[np.ndarray, ...]:
        p = self.params
        return p["amplitude"][row], p["f0_kHz"][row], p["Q"][row], p["phase_rad"][row]

    def expected_line(self, row: int) -> np.ndarray:
        """Noise-free complex response ``[cols, axis.size]`` (complex128) of scan row ``row``."""
        self._check_row(row)
        return sho_response(self.freq_kHz, *self._row_params(row))

    def line(self, row: int) -> np.ndarray:
        """Measured ``[cols, axis.size, 2]`` float32 (amplitude a.u., phase rad) of row ``row``;
        the same for the same (seed, row)."""
        self._check_row(row)
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(1, row)))
        a0, f0, q, phi0 = (np.asarray(v, dtype=np.float64)[:, None] for v in self._row_params(row))
        f = self.freq_kHz[None, :]
        re, im = f0 * f0 - f * f, f * f0 / q
        # H = A0 f0^2 e^{i phi0} / (re + i im) = g e^{i phi0} (re - i im), g = A0 f0^2 / (re^2 + im^2)
        g = a0 * f0 * f0 / (re * re + im * im)
        c, s = np.cos(phi0), np.sin(phi0)
        h_re = g * (c * re + s * im)
        h_im = g * (s * re - c * im)
        phase = phi0 - np.arctan2(im, re)
        return _measure(h_re, h_im, phase, self.cfg.noise, rng)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write label, parameter maps, cell ids, coverage, class names, axis and config to an ``.npz`` file."""
        np.savez_compressed(
            path,
            label=self.label,
            cell_id=self.cell_id,
            coverage=self.coverage,
            class_names=np.array(CLASSES),
            components=np.array(COMPONENTS),
            axis=np.array(self.cfg.axis.model_dump_json()),
            config=np.array(self.cfg.to_json()),
            **{f"param_{k}": v for k, v in self.params.items()},
        )


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what ``BEPFMSample.save_ground_truth`` wrote: arrays, ``params`` (dict), ``axis`` and ``config``."""
    with np.load(path, allow_pickle=False) as data:
        return {
            "label": data["label"],
            "cell_id": data["cell_id"],
            "coverage": data["coverage"],
            "params": {k: data[f"param_{k}"] for k in PARAM_NAMES},
            "class_names": tuple(str(s) for s in data["class_names"]),
            "components": tuple(str(s) for s in data["components"]),
            "axis": Axis.model_validate_json(str(data["axis"])),
            "config": BEPFMConfig.from_json(str(data["config"])),
        }


class BEPFMSource:
    """What the streaming simulator plays: a BE-PFM scan of M. lysodeikticus and P. fluorescens."""

    modality = "bepfm"

    def __init__(self, cfg: BEPFMConfig = BEPFMConfig()) -> None:
        self.cfg = cfg
        self.sample = BEPFMSample(cfg)
        self.shape: tuple[int, int] = (cfg.rows, cfg.cols)
        self.axis: Axis = cfg.axis
        self.components: list[str] = list(COMPONENTS)
        self.meta: dict[str, Any] = {
            "simulator": "instrument_sim.bepfm",
            "classes": list(CLASSES),
            "components": list(COMPONENTS),
            "seed": cfg.seed,
            "pixel_size_um": cfg.pixel_size_um,
            "noise": cfg.noise,
        }

    def line(self, row: int) -> np.ndarray:
        return self.sample.line(row)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        self.sample.save_ground_truth(path)
