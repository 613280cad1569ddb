"""Atomic-resolution HAADF STEM of a 2-D crystal with point defects: frames, movies and their ground truth.

Pure numpy, no sockets, no torch. The simulator renders the training data of the STEM recognizer
(a U-Net that segments atoms and defects, as AtomAI does for WS2 and graphene defect libraries) and the
movies the streaming simulator plays to scanlens, together with exact ground truth: the position and
class of every atomic column, the position, class and identity of every defect, and a per-pixel
segmentation target in :data:`SEG_CLASSES`.

**Lattices** (:data:`LATTICES`). Both are honeycombs seen along the c axis: a hexagonal Bravais lattice
``a1 = a (cos t, sin t)``, ``a2 = a (cos(t + 60 deg), sin(t + 60 deg))`` with a "metal" site at ``0``
and a "chalcogen" site at ``(a1 + a2) / 3``, so the nearest-neighbour (metal-chalcogen) distance is
``a / sqrt(3)`` (:func:`nearest_neighbour_spacing_px`); the hollow site of the honeycomb is at
``2 (a1 + a2) / 3``. The in-plane rotation ``t`` is random per movie (seeded; or fixed by
``STEMConfig.rotation_deg``), and so is the lattice origin.

* ``"ws2"``: 2H-WS2, a = 0.316 nm. Metal columns hold one W (Z = 74), chalcogen columns an S2 pair
  (2 x Z = 16; the two S of a 2H layer project onto the same column). Dopant: Mo (Z = 42) on a metal
  site. Adatom: W.
* ``"graphene"``: a = 0.246 nm, C (Z = 6) on both sites. The A and B sublattices play the "metal" and
  "chalcogen" roles in the class lists (so the four defect classes and the Markov chain keep their
  meaning: ``chalcogen_vacancy`` is a vacancy on the B sublattice). Both are carbon and look identical:
  under an arbitrary rotation no recognizer can tell them apart from the image, so merge ``metal`` with
  ``chalcogen`` and ``metal_vacancy`` with ``chalcogen_vacancy`` when training or scoring on graphene.
  Dopant: Si (Z = 14) on an A site. Adatom: Si.

**Z-contrast.** The HAADF intensity of a column is ``sum over its atoms of Z**1.7`` (the Rutherford-like
exponent of high-angle scattering), expressed relative to the host metal column (W in WS2, C in
graphene): an S2 column is ``2 (16/74)**1.7 = 0.148`` of a W column, a Mo dopant ``(42/74)**1.7 =
0.382``, a Si dopant in graphene ``(14/6)**1.7 = 4.22`` of a C column. The chalcogen vacancy removes the
whole S2 column (a V_S2 double vacancy, not a single missing S): a site that is dark in the image, so
the ground truth stays unambiguous at the doses of interest; a single S vacancy would only halve a
column that is already 15 % of W.

**Imaging.** Each column is a Gaussian probe image (FWHM ``blur_fwhm_nm``) of peak ``weight`` on top of
a constant ``background`` (a fraction of ``dose``); the expected counts are ``dose * (background + sum_k
weight_k G_k)``, so ``dose`` is the expected peak counts of an isolated host metal column above the
background, and the detector draws Poisson counts (integers, returned as float32). Scan distortions
are applied in the forward model, pixel by pixel, where the scan samples the specimen:

* drift: the specimen moves at a constant velocity ``v`` (``|v| = drift_px_per_frame`` pixels per frame
  time, random direction per movie) while it is scanned row by row, so scan row ``r`` of frame ``i``
  sees it shifted by ``v (i + r / size)``: frame-to-frame shift ``v`` and a linear within-frame drift
  along the slow scan axis (which shears and stretches the lattice slightly);
* line jitter: every scan line gets its own random horizontal shift ``N(0, jitter_px)``.

Ground-truth coordinates are where an atom appears in the image (distorted frame): drift applied
exactly, the jitter of the rows it covers averaged with the probe profile (its intensity centroid).
``x`` is the column, ``y`` the row, pixel centres at integers.

**Defects and movies.** ``n_defects`` defects with ids ``0..n-1`` each carry a position and a class in
:data:`DEFECT_CLASSES`. Vacancies and dopants are bound to lattice sites (metal vacancies and dopants
to the metal sublattice, chalcogen vacancies to the chalcogen one) and move by hops to one of the six
nearest sites of their sublattice (a jump of one lattice constant ``a``): per frame a Poisson number of
hops with mean ``4 D / a**2``, each in a random direction, so that ``<|dr|**2> = 4 D`` per frame
exactly, as for a continuous walk, while every position stays a lattice site. Adatoms take a 2-D
Gaussian random-walk step with ``<|dr|**2> = 4 D`` per frame. ``D`` is in nm^2 per frame in the
config and in px^2 per frame as :attr:`STEMMovie.diffusion_px2`. After the step a defect changes
class with the row-stochastic transition matrix, and moves to the nearest site of its new class's
sublattice (a new adatom to the nearest hollow site of the honeycomb). Defects stay inside a margin of
2 lattice constants from the frame edges (a step that leaves it is redrawn; an adatom's step is
reflected off the edge first, in image coordinates) and at least 3 lattice constants apart (a step
that comes too close is redrawn; after 100 failed draws the defect stays, or takes the nearest allowed
site of its new class), so that every defect owns its lattice sites. That hard-core repulsion and
the walls slow the defects of a crowded movie below ``D``: by about 5 % in the demo's movie (1024 px,
32 defects; ``bench/dynamics.py``), by 10-15 % with 12 defects in 512 px, not measurably in a sparse
field. Rendering: a vacancy removes the column at its site, a
dopant replaces the metal column at its site, an adatom is an extra atom at its position. The
trajectories (specimen coordinates, drift-free) are the hidden state; ``truth(i)["defects"]`` reports
where each defect appears.

**Segmentation target.** ``labels`` paints a disk of radius 0.4 x the nearest-neighbour distance
(``0.073 nm`` in WS2, ``0.057 nm`` in graphene; disks never overlap) around every column in its class,
around every vacancy site in the vacancy's class, and around each dopant and adatom; everything else is
``background``.

**Speed.** Each column is rendered as an exact sampled Gaussian on a small patch (the distortions
evaluated row by row); a 512 x 512 WS2 frame (~2,400 columns) renders in ~25-30 ms on one core
(see the notes of ``tests/test_stem_sim_imaging.py``).

**Modules.** :mod:`.config` (class lists, lattice chemistry, :class:`STEMConfig`), :mod:`.lattice`
(honeycomb geometry of a movie), :mod:`.scan` (drift and line jitter), :mod:`.dynamics` (the defect
walk), :mod:`.columns` (the columns a frame shows), :mod:`.render` (image formation), :mod:`.truth`
(ground truth and its file), :mod:`.movie` (:class:`STEMMovie`), :mod:`.source` (:class:`STEMSource`,
:func:`training_pair`).
"""

from __future__ import annotations

from .config import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    LABEL_RADIUS_FRACTION,
    LATTICE_SPECS,
    LATTICES,
    MARGIN_A,
    MIN_SEPARATION_A,
    SEG_CLASSES,
    Z_EXPONENT,
    LatticeSpec,
    STEMConfig,
    nearest_neighbour_spacing_px,
)
from .movie import STEMMovie
from .source import STEMSource, training_pair
from .truth import load_ground_truth, merge_sublattices

__all__ = [
    "ATOM_CLASSES",
    "DEFECT_CLASSES",
    "LABEL_RADIUS_FRACTION",
    "LATTICES",
    "LATTICE_SPECS",
    "MARGIN_A",
    "MIN_SEPARATION_A",
    "SEG_CLASSES",
    "Z_EXPONENT",
    "LatticeSpec",
    "STEMConfig",
    "STEMMovie",
    "STEMSource",
    "load_ground_truth",
    "merge_sublattices",
    "nearest_neighbour_spacing_px",
    "training_pair",
]
