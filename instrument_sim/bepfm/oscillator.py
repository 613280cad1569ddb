"""The damped harmonic oscillator of a BE-PFM pixel: its response over the band and noisy measurements of it."""

from __future__ import annotations

import math

import numpy as np

from scanlens.protocol.messages import Axis

COMPONENTS: tuple[str, ...] = ("amplitude", "phase")
DEFAULT_AXIS: Axis = Axis(size=128, offset=310.0, scale=0.625, units="kHz")


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


def measure_sho(
    freq_kHz: np.ndarray, amplitude: np.ndarray, f0_kHz: np.ndarray, q: np.ndarray, phase_rad: np.ndarray,
    noise: float, rng: np.random.Generator,
) -> np.ndarray:
    """:func:`measure` of the SHO response of per-pixel parameters ``[n]`` over ``freq_kHz``: float32
    ``[n, len(freq), 2]`` (amplitude, phase)."""
    a0, f0, qq, phi0 = (np.asarray(v, dtype=np.float64)[:, None] for v in (amplitude, f0_kHz, q, phase_rad))
    f = np.asarray(freq_kHz, dtype=np.float64)[None, :]
    re, im = f0 * f0 - f * f, f * f0 / qq
    # H = A0 f0^2 e^{i phi0} / (re + i im) = g e^{i phi0} (re - i im), g = A0 f0^2 / (re^2 + im^2)
    g = a0 * f0 * f0 / (re * re + im * im)
    c, s = np.cos(phi0), np.sin(phi0)
    h_re = g * (c * re + s * im)
    h_im = g * (s * re - c * im)
    phase = phi0 - np.arctan2(im, re)
    return _measure(h_re, h_im, phase, noise, rng)
