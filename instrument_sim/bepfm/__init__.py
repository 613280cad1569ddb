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

**A class the shipped model does not know** (``BEPFMConfig.spores_per_100um2``, ``scanlens sim bepfm
--spores-per-100um2``; 0 by default, and then a scan is exactly what it was before): *Bacillus
subtilis* endospores, spherocylinders of width N(0.65, 0.04) um clipped to 0.55-0.8 um and length
N(1.3, 0.1) um clipped to 1.6-2.4 widths, placed among the cocci and rods. Their rigid, dehydrated
coat gives a stiffer, less lossy contact with a weak response of the opposite phase: mean f0 366 kHz,
Q 141, A0 0.12 a.u., phi0 -0.70 rad (stiffness loadings (+1.75, +2.0, +2.7, -3.5): along the stiffness
direction in f0, Q and A0, against it in phase, so off the training classes' sheets), with the same
stiffness factor and scatter as the other cells. The class is :data:`SPORE_CLASS`, label 3; it is not in
:data:`CLASSES`, which stays the shipped model's output order, but :data:`ALL_CLASSES` (``CLASSES`` then
the spores) is the sample's ``classes``, the ground-truth file's ``class_names`` and the source's
``meta["classes"]`` whenever spores are on. The shipped bepfm-mlp flags most spore pixels novel and
calls them, confidently, background or P. fluorescens (tests/test_sim_foreign_samples.py).

Modules: :mod:`.oscillator` (SHO response and its measurement), :mod:`.parameters` (class parameter
distributions), :mod:`.geometry` (cells and their placement), :mod:`.config` (:class:`BEPFMConfig`),
:mod:`.sample` (:class:`BEPFMSample`), :mod:`.truth` (the ground-truth file), :mod:`.source`
(:class:`BEPFMSource`).
"""

from __future__ import annotations

from .config import BEPFMConfig
from .geometry import Cell, segment_distance
from .oscillator import COMPONENTS, DEFAULT_AXIS, axis_frequencies, measure, sho_amplitude_phase, sho_response
from .parameters import (
    ALL_CLASSES,
    CLASSES,
    F0_RANGE_KHZ,
    PARAM_NAMES,
    Q_RANGE,
    SPORE_CLASS,
    sample_parameters,
    to_physical,
)
from .sample import BEPFMSample
from .source import BEPFMSource
from .truth import load_ground_truth

__all__ = [
    "ALL_CLASSES",
    "CLASSES",
    "COMPONENTS",
    "DEFAULT_AXIS",
    "F0_RANGE_KHZ",
    "PARAM_NAMES",
    "Q_RANGE",
    "SPORE_CLASS",
    "BEPFMConfig",
    "BEPFMSample",
    "BEPFMSource",
    "Cell",
    "axis_frequencies",
    "load_ground_truth",
    "measure",
    "sample_parameters",
    "segment_distance",
    "sho_amplitude_phase",
    "sho_response",
    "to_physical",
]
