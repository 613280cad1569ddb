"""Reference EELS spectra of the phases: analytic line shapes of energy loss, normalised, on any axis.

Two samples share these line shapes (:data:`SAMPLE_PHASES`): the ``"oxide"`` STO / LSMO / BFO
heterostructure the shipped models were trained on (:data:`PHASES`, with LAO as the unknown phase), and
the ``"cto"`` CaTiO3 / interface / NdGaO3 heterostructure (:data:`CTO_PHASES`), none of whose phases
the shipped models know: a user's own sample for live training (docs/live-training.md).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from scanlens.protocol.messages import Axis

PHASES: tuple[str, ...] = ("STO", "LSMO", "BFO")
#: The phase of the optional unknown region; deliberately not in :data:`PHASES` (the reference set).
UNKNOWN_PHASE: str = "LAO"
#: The reference set and the unknown phase: the phases of the ``"oxide"`` sample (the shipped models' world).
ALL_PHASES: tuple[str, ...] = (*PHASES, UNKNOWN_PHASE)
#: The phases of the ``"cto"`` sample, in class-map order: CaTiO3, the reduced, intermixed layer at its
#: interfaces with the substrate (its own phase, not a mixture of the two) and NdGaO3. None is in
#: :data:`ALL_PHASES`: a sample the shipped models do not know.
CTO_PHASES: tuple[str, ...] = ("CTO", "interface", "NGO")
#: The phases of each sample (``EELSConfig.sample``), in class-map order.
SAMPLE_PHASES: dict[str, tuple[str, ...]] = {"oxide": PHASES, "cto": CTO_PHASES}
DEFAULT_AXIS: Axis = Axis(size=512, offset=0.0, scale=0.25, units="eV")

#: Energy window over which every reference spectrum integrates to 1 (so ``dose`` is total counts).
NORM_RANGE_EV: tuple[float, float] = (0.0, 128.0)


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


def _cto(e: np.ndarray) -> np.ndarray:
    """CaTiO3: Ti like STO, but Ca for Sr: no Sr N2,3 at 20 eV, the Ca M2,3 edge with its sharp 3p -> 3d
    resonance instead, and a plasmon raised by the denser (orthorhombic, tilted) cell."""
    low = (
        0.30 * _gauss(e, 6.2, 1.0)  # O 2p -> Ti 3d t2g
        + 0.30 * _gauss(e, 9.4, 1.4)  # O 2p -> Ti 3d eg
        + 0.22 * _gauss(e, 12.6, 1.8)  # O 2p -> Ca 3d
        + 0.26 * _edge(e, 25.4, 2.5, 3.0)  # Ca M2,3 (3p)
        + 0.22 * _gauss(e, 30.6, 1.3)  # Ca 3p -> 3d resonance on top of the edge
        + 1.00 * _plasmon(e, 30.2, 9.5)
    )
    core = (
        0.25 * _background(e, 2.8)
        + 0.36 * _edge(e, 35.0, 5.0, 2.2)  # Ti M2,3, delayed maximum ~45-47 eV
        + 0.025 * _edge(e, 44.3, 1.0, 2.5)  # Ca M1 (3s)
        + 0.02 * _edge(e, 60.0, 1.0, 2.5)  # Ti M1
    )
    return _gap(e, 3.5) * (low + core)


def _ngo(e: np.ndarray) -> np.ndarray:
    """NdGaO3 (the substrate of the ``"cto"`` stack): no transition-metal M2,3 edge (Ga 3d is full) but the
    shallow Ga 3d and Nd 5p edges in the low loss, the Ga M2,3 edges and the Nd N4,5 giant resonance at
    the top of the range."""
    low = (
        0.16 * _gauss(e, 7.6, 1.5)  # O 2p -> Nd 5d / Ga 4s
        + 0.22 * _gauss(e, 12.0, 2.2)  # O 2p -> Nd 4f / Ga 4p
        + 0.30 * _edge(e, 19.2, 1.5, 3.0)  # Ga M4,5 (3d)
        + 0.30 * _gauss(e, 22.6, 1.3)  # Nd O3 (5p3/2)
        + 0.15 * _gauss(e, 25.4, 1.5)  # Nd O2 (5p1/2)
        + 1.00 * _plasmon(e, 24.6, 10.5)
    )
    core = (
        0.22 * _background(e, 3.1)
        + 0.060 * _edge(e, 103.5, 3.0, 2.2)  # Ga M3 (3p3/2)
        + 0.030 * _edge(e, 107.0, 3.0, 2.2)  # Ga M2 (3p1/2)
        + 0.030 * _gauss(e, 112.5, 0.7)  # Nd N4,5 pre-peaks
        + 0.040 * _gauss(e, 115.5, 0.9)
        + 0.080 * _gauss(e, 121.5, 6.0)  # Nd N4,5 giant resonance (4d -> 4f)
        + 0.025 * _edge(e, 112.0, 2.0, 2.0)
    )
    return _gap(e, 3.8) * (low + core)


def _interface(e: np.ndarray) -> np.ndarray:
    """The CTO / NGO interface layer, (Ca,Nd)(Ti,Ga)O3-d a few unit cells thick: reduced Ti3+ (an in-gap
    d1 state, the t2g / eg split washed out, the Ti M2,3 edge ~1 eV lower with an earlier maximum), a
    damped bulk plasmon and an interface plasmon of the thin layer between two dielectrics, with diluted
    Ca, Ga and Nd edges. Not a linear mixture of its neighbours: no sum of CTO and NGO has these features."""
    low = (
        0.10 * _gauss(e, 1.8, 0.6)  # Ti3+ 3d1 in-gap state
        + 0.36 * _gauss(e, 7.8, 2.4)  # O 2p -> Ti 3d, crystal-field split washed out
        + 0.12 * _edge(e, 19.2, 1.5, 3.0)  # Ga M4,5, diluted
        + 0.12 * _gauss(e, 22.6, 1.3)  # Nd O3, diluted
        + 0.14 * _edge(e, 25.4, 2.5, 3.0)  # Ca M2,3, diluted
        + 0.40 * _plasmon(e, 16.5, 6.0)  # interface plasmon of the thin layer
        + 0.80 * _plasmon(e, 27.2, 13.0)  # bulk plasmon, damped by the disorder
    )
    core = (
        0.26 * _background(e, 2.9)
        + 0.26 * _edge(e, 34.0, 3.0, 2.4)  # Ti3+ M2,3: lower onset, earlier maximum
        + 0.020 * _edge(e, 103.5, 3.0, 2.2)  # Ga M2,3, diluted
        + 0.035 * _gauss(e, 121.5, 6.0)  # Nd N4,5, diluted
    )
    return _gap(e, 0.8) * (low + core)  # the reduced layer is nearly metallic


_SHAPES = {"STO": _sto, "LSMO": _lsmo, "BFO": _bfo, UNKNOWN_PHASE: _lao,
           "CTO": _cto, "interface": _interface, "NGO": _ngo}


@lru_cache(maxsize=None)
def _norm(phase: str) -> float:
    lo, hi = NORM_RANGE_EV
    e = np.linspace(lo, hi, 25_601)
    y = _SHAPES[phase](e)
    return float(np.sum(0.5 * (y[1:] + y[:-1])) * (e[1] - e[0]))


def reference_spectrum(phase: str, energy_eV: np.ndarray) -> np.ndarray:
    """Noise-free spectrum of one pure phase, counts per eV per unit dose (float64, > 0 above ~3 eV).

    ``phase`` is one of :data:`ALL_PHASES` (the reference set :data:`PHASES` or :data:`UNKNOWN_PHASE`) or
    of :data:`CTO_PHASES`.
    """
    if phase not in _SHAPES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {(*ALL_PHASES, *CTO_PHASES)}")
    e = np.asarray(energy_eV, dtype=np.float64)
    return _SHAPES[phase](e) / _norm(phase)


def reference_spectra(energy_eV: np.ndarray, phases: Sequence[str] = PHASES) -> np.ndarray:
    """The reference spectra of ``phases`` stacked as ``[len(phases), n]`` float64."""
    e = np.asarray(energy_eV, dtype=np.float64)
    return np.stack([reference_spectrum(p, e) for p in phases])


def axis_energies(axis: Axis) -> np.ndarray:
    """Channel positions of ``axis`` (float64)."""
    return axis.offset + axis.scale * np.arange(axis.size, dtype=np.float64)
