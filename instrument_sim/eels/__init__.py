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

Modules: :mod:`.spectra` (reference spectra), :mod:`.detector` (expected counts, noise),
:mod:`.config` (:class:`EELSConfig`), :mod:`.sample` (:class:`EELSSample`), :mod:`.truth` (the
ground-truth file), :mod:`.source` (:class:`EELSSource`).
"""

from __future__ import annotations

from .config import EELSConfig
from .detector import EXACT_POISSON_BELOW, add_detector_noise, expected_counts, simulate_spectra
from .sample import UNKNOWN_PEAK, EELSSample
from .source import EELSSource
from .spectra import (
    ALL_PHASES,
    DEFAULT_AXIS,
    NORM_RANGE_EV,
    PHASES,
    UNKNOWN_PHASE,
    axis_energies,
    reference_spectra,
    reference_spectrum,
)
from .truth import load_ground_truth

__all__ = [
    "ALL_PHASES",
    "DEFAULT_AXIS",
    "EXACT_POISSON_BELOW",
    "NORM_RANGE_EV",
    "PHASES",
    "UNKNOWN_PEAK",
    "UNKNOWN_PHASE",
    "EELSConfig",
    "EELSSample",
    "EELSSource",
    "add_detector_noise",
    "axis_energies",
    "expected_counts",
    "load_ground_truth",
    "reference_spectra",
    "reference_spectrum",
    "simulate_spectra",
]
