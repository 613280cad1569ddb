"""EELS physics of oxide heterostructures (STO / LSMO / BFO; CTO / NGO): reference spectra, sample, noisy lines.

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

**A sample the shipped models do not know** (``EELSConfig.sample = "cto"``, ``scanlens sim eels --sample
cto``): CaTiO3 films on an NdGaO3 substrate, NGO / CTO / NGO / CTO / NGO with a reduced, intermixed
interface layer (~2.4 nm) at each of the four CTO / NGO interfaces, the same erf intermixing and
roughness as the oxide stack. Its three phases (:data:`CTO_PHASES`, the class map's order) are
analytic like the others and none is in :data:`ALL_PHASES`:

* CTO: Ti as in STO (t2g / eg, Ti M2,3 at 35 eV), but Ca for Sr: no Sr N2,3 at 20 eV, the Ca M2,3
  edge (25.4 eV) with its sharp 3p -> 3d resonance at 30.6 eV, Ca M1 (44 eV), a 30.2 eV plasmon;
* interface, (Ca,Nd)(Ti,Ga)O3-d: Ti3+ (an in-gap state at 1.8 eV, the crystal-field split washed out,
  the Ti M2,3 onset 1 eV lower with an earlier maximum), a damped 27.2 eV bulk plasmon plus a 16.5 eV
  interface plasmon of the thin layer, diluted Ca / Ga / Nd edges, a near-metallic 0.8 eV gap: its
  own spectrum, not a mixture of its neighbours';
* NGO: no transition-metal M2,3 edge (Ga 3d is full) but Ga M4,5 (19.2 eV) and Nd O2,3 (22.6 / 25.4
  eV) in the low loss, a 24.6 eV plasmon, the Ga M2,3 edges (103.5 / 107 eV) and the Nd N4,5 pre-peaks
  and giant resonance (112-122 eV).

Each is as close to its nearest training phase as the training phases are to each other (cosine
similarity on 5-125 eV: CTO-STO 0.967, interface-BFO 0.982, NGO-LSMO 0.948; STO / LSMO / BFO pairs
0.874-0.981), and the interface is no mixture of its neighbours (the best non-negative CTO + NGO fit
leaves 19 % of its norm), yet the shipped eels-mlp and eels-fit flag practically all of the sample's
pixels novel at the default dose while calling CTO "STO" and NGO "LSMO" with full confidence
(tests/test_sim_foreign_samples.py): a sample for live training (docs/live-training.md). The
ground-truth file's ``phase_names`` are the sample's phases.

Modules: :mod:`.spectra` (reference spectra), :mod:`.detector` (expected counts, noise),
:mod:`.config` (:class:`EELSConfig`), :mod:`.sample` (:class:`EELSSample`), :mod:`.truth` (the
ground-truth file), :mod:`.source` (:class:`EELSSource`).
"""

from __future__ import annotations

from .config import EELSConfig
from .detector import EXACT_POISSON_BELOW, add_detector_noise, expected_counts, simulate_spectra
from .sample import STACKS, UNKNOWN_PEAK, EELSSample
from .source import EELSSource
from .spectra import (
    ALL_PHASES,
    CTO_PHASES,
    DEFAULT_AXIS,
    NORM_RANGE_EV,
    PHASES,
    SAMPLE_PHASES,
    UNKNOWN_PHASE,
    axis_energies,
    reference_spectra,
    reference_spectrum,
)
from .truth import load_ground_truth

__all__ = [
    "ALL_PHASES",
    "CTO_PHASES",
    "DEFAULT_AXIS",
    "EXACT_POISSON_BELOW",
    "NORM_RANGE_EV",
    "PHASES",
    "SAMPLE_PHASES",
    "STACKS",
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
