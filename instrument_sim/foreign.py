"""Foreign data: what the recognizers were *not* trained on, for checking that they say so (novelty).

Each generator stands for input a user may really send: spectra from another instrument or simulator,
with its own shape and calibration (a zero-loss peak, a plasmon, a power-law tail, no edges of our
phases), flat Poisson noise (a detector with the beam off, a dead line), and, per modality, a response
of another physical kind. Pure numpy; every generator takes a ``numpy.random.Generator`` and returns
float32 arrays as an instrument would send them (raw counts, or the modality's physical units).
"""

from __future__ import annotations

import numpy as np

from scanlens.protocol import Axis

#: The axis of the "other instrument" EELS spectra: a dispersion of 0.25 eV/channel from -5 eV, so the
#: zero-loss peak is in the spectrum, as many instruments record it; the service maps it onto the
#: model's axis like any scan's.
OTHER_EELS_AXIS = Axis(size=1024, offset=-5.0, scale=0.25, units="eV")


def _energies(axis: Axis) -> np.ndarray:
    return axis.offset + axis.scale * np.arange(axis.size)


def eels_other_instrument(n: int, rng: np.random.Generator, *, axis: Axis = OTHER_EELS_AXIS,
                          counts: float = 2.0e5) -> np.ndarray:
    """``[n, axis.size]`` Poisson counts of a generic low-loss + core-loss spectrum of another material
    and instrument: a zero-loss peak (Gaussian core, Lorentzian tail), one or two Drude plasmons at
    12-22 eV, a power-law background ``E**-r`` (r 2.5-4) from 10 eV and one saw-tooth edge at 40-110 eV
    with its own power-law decay; each spectrum draws its own shapes, ``counts`` in total on average."""
    e = _energies(axis)
    out = np.empty((n, axis.size), np.float32)
    pos = np.clip(e, 0.5, None)
    for i in range(n):
        fwhm = rng.uniform(0.4, 1.5)
        zlp = np.exp(-0.5 * (e / (fwhm / 2.355)) ** 2) + 0.02 / (1 + (e / fwhm) ** 2)
        lam = zlp * rng.uniform(0.3, 3.0)
        for _ in range(rng.integers(1, 3)):
            ep, width = rng.uniform(12, 22), rng.uniform(3, 8)
            drude = (e * width * ep**2) / ((e**2 - ep**2) ** 2 + (e * width) ** 2)
            lam = lam + np.where(e > 0, drude, 0.0) * rng.uniform(0.05, 0.4)
        r = rng.uniform(2.5, 4.0)
        tail = np.where(e > 10, (pos / 10.0) ** -r, 0.0)
        lam = lam + tail * rng.uniform(0.02, 0.2)
        onset = rng.uniform(40, 110)
        edge = np.where(e > onset, (pos / onset) ** -rng.uniform(2, 4), 0.0) * rng.uniform(0.002, 0.02)
        lam = np.clip(lam + edge, 0.0, None)
        lam *= counts * rng.uniform(0.3, 3.0) / lam.sum()
        out[i] = rng.poisson(lam)
    return out


def flat_noise(n: int, channels: int, rng: np.random.Generator, *, counts_per_channel: float = 50.0,
               components: int | None = None) -> np.ndarray:
    """``[n, channels]`` (or ``[n, channels, components]``) Poisson counts of a flat spectrum: nothing but
    counting noise around ``counts_per_channel`` (each spectrum scaled by a factor drawn from 0.3-3)."""
    shape = (n, channels) if components is None else (n, channels, components)
    scale = rng.uniform(0.3, 3.0, (n,) + (1,) * (len(shape) - 1))
    return rng.poisson(counts_per_channel * scale * np.ones(shape)).astype(np.float32)


# --------------------------------------------------------------------------- switching loops (loops-mlp)
#
# Every loops_* generator returns ``[n, axis.size, 2]`` float32 polarisation in units of its saturation
# value, components ("up", "down") as the loops simulator has them: the ascending branch of the field sweep
# -H_MAX..H_MAX from the saturated state P = -1, then the descending one, sampled at ``axis``'s fields
# (default: the simulator's), with white measurement noise of rms ``noise`` as the simulator adds.


def _loop_fields(axis: Axis | None) -> tuple[Axis, np.ndarray]:
    from scanlens.sim.loops import DEFAULT_AXIS  # numpy only; imported here so the EELS generators need nothing of it

    axis = DEFAULT_AXIS if axis is None else axis
    return axis, _energies(axis)


def _with_noise(loops: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    return (loops + noise * rng.standard_normal(loops.shape)).astype(np.float32)


def loops_flat_noise(n: int, rng: np.random.Generator, *, axis: Axis | None = None) -> np.ndarray:
    """A dead or disconnected channel: no loop at all, only a constant offset (-0.3..0.3) and white noise
    whose rms is drawn log-uniformly from 0.01 to 0.6, clipped to the polarisation's range -1..1 (at the
    top of the range that is white noise filling -1..1)."""
    axis, _ = _loop_fields(axis)
    offset = rng.uniform(-0.3, 0.3, (n, 1, 1))
    rms = np.exp(rng.uniform(np.log(0.01), np.log(0.6), (n, 1, 1)))
    return np.clip(offset + rms * rng.standard_normal((n, axis.size, 2)), -1.0, 1.0).astype(np.float32)


def loops_linear_dielectric(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                            noise: float = 0.03) -> np.ndarray:
    """A linear dielectric, no hysteresis and no switching: ``P = clip(chi H + P0, -1, 1)`` on both branches,
    with ``chi`` such that P saturates at |H| = 3..30 (beyond the sweep: a straight line) and a small
    offset ``P0`` (-0.1..0.1)."""
    axis, h = _loop_fields(axis)
    chi = 1.0 / rng.uniform(3.0, 30.0, (n, 1))
    p0 = rng.uniform(-0.1, 0.1, (n, 1))
    p = np.clip(chi * h[None, :] + p0, -1.0, 1.0)
    return _with_noise(np.stack([p, p], axis=-1), rng, noise)


def loops_antiferroelectric(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                            noise: float = 0.03) -> np.ndarray:
    """The pinched double loop of an antiferroelectric: P ~ 0 around H = 0 on both branches, field-induced
    switching at ``±H_f`` (3..8) with a hysteresis of ``±dH`` (0.5..2.5) about each, transitions of width
    0.3..1.5 and a linear background of slope 0..0.03."""
    axis, h = _loop_fields(axis)
    hf = rng.uniform(3.0, 8.0, (n, 1))
    dh = rng.uniform(0.5, 2.5, (n, 1))
    w = rng.uniform(0.3, 1.5, (n, 1))
    slope = rng.uniform(0.0, 0.03, (n, 1))
    hh = h[None, :]

    def branch(sign: float) -> np.ndarray:  # sign +1: ascending (switches late going up), -1: descending
        up = np.tanh((hh - (hf + sign * dh)) / w)  # the positive transition
        down = np.tanh((hh + (hf - sign * dh)) / w)  # the negative one
        return np.clip(0.5 * (up + down) + slope * hh, -1.0, 1.0)

    return _with_noise(np.stack([branch(1.0), branch(-1.0)], axis=-1), rng, noise)


def loops_imprinted(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                    noise: float = 0.03) -> np.ndarray:
    """A ferroelectric loop with a large imprint: a smooth loop (coercive field 1..4, transition width
    0.3..2) shifted along the field by 4..7 either way (a built-in field the Ising model has no term for)."""
    axis, h = _loop_fields(axis)
    hc = rng.uniform(1.0, 4.0, (n, 1))
    w = rng.uniform(0.3, 2.0, (n, 1))
    shift = rng.uniform(4.0, 7.0, (n, 1)) * rng.choice([-1.0, 1.0], (n, 1))
    hh = h[None, :] - shift
    return _with_noise(np.stack([np.tanh((hh - hc) / w), np.tanh((hh + hc) / w)], axis=-1), rng, noise)


def loops_outside_phase(n: int, rng: np.random.Generator, *, axis: Axis | None = None, noise: float = 0.03,
                        j0_range: tuple[float, float] = (5.0, 8.0), dj_max: float = 3.6,
                        dh_max: float = 6.8) -> np.ndarray:
    """Random-bond random-field Ising loops (the loops simulator, :func:`scanlens.sim.loops.simulate_loops`)
    of a phase outside loops-mlp's training set: a coupling J0 drawn from ``j0_range`` (k_B T), far above the
    training prior's 3.3 (a hard ferroelectric whose coercive field is at or beyond the sweep, so it does not
    or only partly switches), with dJ and dh uniform in 0..``dj_max`` and 0..``dh_max``."""
    from scanlens.sim.loops import simulate_loops

    axis, _ = _loop_fields(axis)
    j0 = rng.uniform(*j0_range, n)
    dj = rng.uniform(0.0, dj_max, n)
    dh = rng.uniform(0.0, dh_max, n)
    return _with_noise(simulate_loops(j0, dj, dh, axis=axis, rng=rng), rng, noise)


# --------------------------------------------------------------------------- band excitation (bepfm-mlp)
#
# Every bepfm_* generator returns ``[n, axis.size, 2]`` float32 (amplitude a.u., phase rad), components
# ("amplitude", "phase") as the BE-PFM simulator (:mod:`scanlens.sim.bepfm`) has them, on ``axis``'s
# frequencies (default: the simulator's band, 310-389.375 kHz): a complex response H(f) plus complex
# Gaussian measurement noise n of rms ``sigma`` a.u. per bin (``sigma / sqrt(2)`` in each of the real and
# imaginary parts), reported as ``|H + n|`` and the continuous phase ``arg H + arg(1 + n / H)``, exactly as
# the simulator measures it. Each response draws its own ``sigma`` log-uniformly from ``noise_range``
# (default 0.6-1.8 a.u., the simulator's default 1.0 a.u. times bepfm-mlp's training range).

BEPFM_NOISE_RANGE: tuple[float, float] = (0.6, 1.8)


def _bepfm_freqs(axis: Axis | None) -> tuple[Axis, np.ndarray]:
    from scanlens.sim.bepfm import DEFAULT_AXIS, axis_frequencies  # numpy only, imported here as for the loops

    axis = DEFAULT_AXIS if axis is None else axis
    return axis, axis_frequencies(axis)


def _bepfm_measure(h: np.ndarray, phase_model: np.ndarray, rng: np.random.Generator,
                   noise_range: tuple[float, float]) -> np.ndarray:
    """The simulator's measurement of complex responses ``h`` ``[n, bins]`` whose continuous phase is
    ``phase_model``, with a noise rms drawn per response from ``noise_range`` (a.u., log-uniform)."""
    n = h.shape[0]
    sigma = np.exp(rng.uniform(np.log(noise_range[0]), np.log(noise_range[1]), (n, 1)))
    z = h + sigma / np.sqrt(2.0) * (rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape))
    out = np.empty((*h.shape, 2), np.float32)
    out[..., 0] = np.abs(z)
    out[..., 1] = phase_model + np.angle(z * np.conj(h))
    return out


def _sho(f: np.ndarray, a0: np.ndarray, f0: np.ndarray, q: np.ndarray, phi0: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray]:
    """Complex SHO response and its continuous phase ``[n, bins]`` (the simulator's oscillator)."""
    ff, a0, f0, q, phi0 = f[None, :], a0[:, None], f0[:, None], q[:, None], phi0[:, None]
    re, im = f0**2 - ff**2, ff * f0 / q
    h = a0 * f0**2 * np.exp(1j * phi0) / (re + 1j * im)
    return h, phi0 - np.arctan2(im, re)


def bepfm_flat_noise(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                     noise_range: tuple[float, float] = BEPFM_NOISE_RANGE) -> np.ndarray:
    """A disconnected tip (or a broken drive): no resonance in the band, only a constant complex offset of
    the lock-in (magnitude 0.1-3 a.u., any phase) and the measurement noise; the phase is that of the offset
    plus the noise's, so it wanders over up to ±pi where the offset is below the noise."""
    axis, f = _bepfm_freqs(axis)
    c = rng.uniform(0.1, 3.0, (n, 1)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (n, 1)))
    h = np.broadcast_to(c, (n, f.size))
    return _bepfm_measure(h, np.broadcast_to(np.angle(c), h.shape), rng, noise_range)


def bepfm_cantilever_mode(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                          noise_range: tuple[float, float] = BEPFM_NOISE_RANGE) -> np.ndarray:
    """Another instrument's response dominated by a different resonance: a higher flexural mode of a free
    (out-of-contact) cantilever in air, a sharp SHO with Q 400-1500 (the contact resonance's training Q is
    20-200) at f0 330-370 kHz, its peak A0 Q 20-300 a.u., any phase offset (another instrument's phase
    reference), over a weak flat background (0-1 a.u.)."""
    axis, f = _bepfm_freqs(axis)
    q = np.exp(rng.uniform(np.log(400.0), np.log(1500.0), n))
    f0 = rng.uniform(330.0, 370.0, n)
    a0 = np.exp(rng.uniform(np.log(20.0), np.log(300.0), n)) / q
    phi0 = rng.uniform(-np.pi, np.pi, n)
    h, phase = _sho(f, a0, f0, q, phi0)
    h = h + rng.uniform(0.0, 1.0, (n, 1)) * np.exp(1j * phi0[:, None])
    return _bepfm_measure(h, phase, rng, noise_range)


def bepfm_electrostatic(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                        noise_range: tuple[float, float] = BEPFM_NOISE_RANGE) -> np.ndarray:
    """Another instrument's response shape: a non-resonant electrostatic tip-sample force read far from any
    mode, a flat amplitude (3-40 a.u., with a tilt of ±20 % across the band) whose phase is linear in
    frequency, ``phi0 - 2 pi f tau``, from a signal delay tau of 2-20 µs (0.8-8 rad across 66 kHz)."""
    axis, f = _bepfm_freqs(axis)
    fc = 0.5 * (f[0] + f[-1])
    amp = rng.uniform(3.0, 40.0, (n, 1)) * (1.0 + rng.uniform(-0.2, 0.2, (n, 1)) * (f[None, :] - fc) / (f[-1] - fc))
    tau_ms = rng.uniform(2e-3, 20e-3, (n, 1))  # kHz x ms = cycles
    phase = rng.uniform(-np.pi, np.pi, (n, 1)) - 2.0 * np.pi * (f[None, :] - fc) * tau_ms
    return _bepfm_measure(amp * np.exp(1j * phase), phase, rng, noise_range)


def bepfm_hard_ferroelectric(n: int, rng: np.random.Generator, *, axis: Axis | None = None,
                             noise_range: tuple[float, float] = BEPFM_NOISE_RANGE) -> np.ndarray:
    """A phase outside bepfm-mlp's training set: a hard ferroelectric film (PZT-like), whose piezoresponse
    is 10-50 times the bacteria's and substrate's (quasi-static A0 4-20 a.u. against 0.1-1.5) on a stiff
    contact of Q 250-600 (training 20-200), at f0 330-372 kHz, with the domain's phase offset 0 or pi
    (up or down polarisation, ±0.1 rad)."""
    axis, f = _bepfm_freqs(axis)
    a0 = np.exp(rng.uniform(np.log(4.0), np.log(20.0), n))
    q = np.exp(rng.uniform(np.log(250.0), np.log(600.0), n))
    f0 = rng.uniform(330.0, 372.0, n)
    phi0 = np.pi * rng.integers(0, 2, n) + rng.normal(0.0, 0.1, n)
    h, phase = _sho(f, a0, f0, q, phi0)
    return _bepfm_measure(h, phase, rng, noise_range)
