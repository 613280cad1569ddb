"""Scores of an unknown-phase detector: the per-pixel chi-squared detection score and the ROC AUC (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike


def detection_score(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The per-pixel score for "not in the reference set": chi2 summed over both windows, ``[n]``."""
    return np.asarray(outputs["chi2"], dtype=np.float64).sum(axis=1)


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (rank-based; ties count one half).

    Equals the probability that a random positive scores higher than a random negative. Any shapes
    of equal size; ValueError for NaN scores or when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    midrank = np.cumsum(counts) - 0.5 * (counts - 1)  # 1-based average rank of each distinct score
    rank_sum = float(midrank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = 15) -> float:
    """Expected calibration error: over ``bins`` equal-width confidence bins on (0, 1], the sample-weighted
    mean of |mean confidence - accuracy| (Guo et al. 2017). 0 is perfect calibration."""
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct).reshape(-1).astype(np.float64)
    if c.shape != ok.shape or c.size == 0:
        raise ValueError(f"confidence and correct must be non-empty and of one size ({c.size} vs {ok.size})")
    which = np.clip(np.ceil(c * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(c[m].mean() - ok[m].mean())
    return float(total)


def interval_coverage(truth: ArrayLike, mean: ArrayLike, sigma: ArrayLike, k: float) -> np.ndarray:
    """Per column, the share of samples whose truth lies within ``k`` sigma of the mean (``[n, p]`` arrays)."""
    t, m, s = (np.asarray(a, dtype=np.float64) for a in (truth, mean, sigma))
    return np.mean(np.abs(t - m) <= k * s, axis=0)
