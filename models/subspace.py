"""The numpy half of the novelty scores (``models/novelty.py`` explains them): a principal subspace of
training features and its score, and the counts floor; torch-free, so a hand-built graph (eels-fit,
``models/physics_fit.py``) and its numpy reference use them without the ``train`` extra."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Score added per unit of ``log(floor / mean counts)`` below a counts floor (``models/novelty.py``).
COUNTS_FLOOR_WEIGHT = 100.0


def stabilised_mean_counts(features: np.ndarray) -> np.ndarray:
    """Mean counts per channel ``[n]`` of variance-stabilised features ``2 sqrt(c + 3/8)`` ``[n, d]``."""
    f = np.asarray(features, np.float64)
    return ((f / 2.0) ** 2 - 0.375).mean(axis=-1)


def counts_floor_penalty(mean_counts: np.ndarray, floor: float) -> np.ndarray:
    """``COUNTS_FLOOR_WEIGHT * max(0, log(floor) - log(mean_counts))``, float64 (numpy)."""
    return COUNTS_FLOOR_WEIGHT * np.maximum(0.0, np.log(floor) - np.log(np.maximum(mean_counts, 1e-3)))


@dataclass
class Subspace:
    """The fitted constants of a novelty score, in numpy (float64): the training features' ``mean`` ``[d]``,
    the top principal directions ``basis`` ``[d, k]`` (orthonormal columns), the per-feature residual variance
    ``residual_var`` ``[d]`` (in the features' units squared) and the number of samples ``n_fit`` they were
    fitted on; ``counts_floor`` when the features are stabilised counts. What ``SubspaceNovelty`` (torch) or
    a hand-built ONNX graph (eels-fit, ``models/physics_fit.py``) stores."""

    mean: np.ndarray
    basis: np.ndarray
    residual_var: np.ndarray
    n_fit: int
    counts_floor: float | None = None  # mean counts per channel (features that are stabilised counts)

    def scores(self, features: np.ndarray, batch: int = 16384) -> np.ndarray:
        """The novelty score of each row of ``features`` ``[n, d]`` (``models/novelty.py``), float64 ``[n]``."""
        inv_var = 1.0 / self.residual_var
        out = np.zeros(len(features))
        for i in range(0, len(features), batch):
            f = np.asarray(features[i:i + batch], np.float64)
            z = f - self.mean
            residual = z - (z @ self.basis) @ self.basis.T
            out[i:i + batch] = (residual * residual * inv_var).mean(axis=-1)
            if self.counts_floor is not None:
                out[i:i + batch] += counts_floor_penalty(stabilised_mean_counts(f), self.counts_floor)
        return out


def fit_subspace(fit: np.ndarray, *, components: int, max_fit: int = 50_000, seed: int = 0,
                 counts_floor: float | None = None) -> Subspace:
    """The mean, ``components`` principal directions and per-feature residual variance of (at most ``max_fit``
    of, drawn with ``seed``) the training features ``fit`` ``[n, d]``: numpy only, no torch module."""
    rng = np.random.default_rng(seed)
    if len(fit) > max_fit:
        fit = fit[rng.choice(len(fit), max_fit, replace=False)]
    fit = np.asarray(fit, np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:components].T
    z = fit - mean
    residual = z - (z @ basis) @ basis.T
    residual_var = np.maximum((residual**2).mean(axis=0), 1e-12 + 1e-6 * float((residual**2).mean()))
    return Subspace(mean, basis, residual_var, len(fit), counts_floor)
