"""Foreign frames: images the frame recognizer (stem-unet, WS2 HAADF) was *not* trained on, for checking
that it says so (novelty); the spectral kinds are in ``foreign.py``. Pure numpy, like the STEM simulator.

Each kind stands for an image a user may really send: another material (graphene, a lattice of one light
element, at the same pixel size), a blank or dead detector (flat Poisson noise), and the same WS2 seen with
inverted, bright-field-like contrast (columns dark on a bright background). All are returned in counts
at the STEM simulator's default pixel size (:class:`scanlens.sim.stem.STEMConfig`).
"""

from __future__ import annotations

import numpy as np

from scanlens.sim.stem import STEMConfig, STEMMovie

#: Doses (counts per pixel of the brightest column) of the foreign frames: log-uniform over this range.
DOSE_RANGE = (20.0, 1000.0)
SIZES = (192, 256, 384)


def _dose_and_size(rng: np.random.Generator) -> tuple[float, int]:
    return float(np.exp(rng.uniform(*np.log(DOSE_RANGE)))), int(rng.choice(SIZES))


def graphene(rng: np.random.Generator) -> np.ndarray:
    """A graphene frame (a = 0.246 nm, carbon on both sites) with 0-3 point defects."""
    dose, size = _dose_and_size(rng)
    cfg = STEMConfig(lattice="graphene", size=size, frames=1, dose=dose, seed=int(rng.integers(2**31)),
                     n_defects=int(rng.integers(0, 4)))
    return STEMMovie(cfg).frame(0).astype(np.float32)


def flat_noise(rng: np.random.Generator) -> np.ndarray:
    """No sample: Poisson noise of a uniform mean (5-100 % of the dose) over the whole frame."""
    dose, size = _dose_and_size(rng)
    return rng.poisson(dose * rng.uniform(0.05, 1.0), (size, size)).astype(np.float32)


def inverted_contrast(rng: np.random.Generator) -> np.ndarray:
    """WS2 with its contrast inverted (columns darker than the vacuum between them, as in bright field):
    Poisson counts of ``1.05 max(lambda) - lambda`` for the simulator's expected HAADF image ``lambda``."""
    dose, size = _dose_and_size(rng)
    movie = STEMMovie(STEMConfig(size=size, frames=1, dose=dose, seed=int(rng.integers(2**31)), n_defects=2))
    lam = movie.expected_frame(0) * dose
    return rng.poisson(lam.max() * 1.05 - lam).astype(np.float32)


#: The kinds, by the name the card's figures use (``<name>_flagged``).
KINDS = {"graphene": graphene, "flat_noise": flat_noise, "inverted_contrast": inverted_contrast}


def foreign_frames(n: int, seed: int) -> dict[str, list[np.ndarray]]:
    """``n`` frames of each kind (:data:`KINDS`), sizes 192-384 px, doses 20-1000 counts, all from ``seed``."""
    rng = np.random.default_rng(seed)
    return {name: [make(rng) for _ in range(n)] for name, make in KINDS.items()}
