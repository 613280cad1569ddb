"""Random draws shared by the training-data generators (numpy only)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["log_uniform"]


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw uniform in ``log(lo) .. log(hi)``, i.e. ``exp(rng.uniform(log lo, log hi))`` (one ``uniform`` call)."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
