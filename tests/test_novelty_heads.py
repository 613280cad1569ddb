"""The novelty heads' arithmetic (models/novelty.py, models/subspace.py) on data with known answers: the
torch head and the numpy score agree, the counts floor adds nothing above it and grows below it, and
the nearest-neighbour head is zero on its own bank and the distance to it elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.models.subspace import COUNTS_FLOOR_WEIGHT, counts_floor_penalty, fit_subspace, stabilised_mean_counts

torch = pytest.importorskip("torch")


def _stabilised(counts: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(counts + 0.375)


def test_counts_floor_adds_nothing_above_it_and_grows_below_it() -> None:
    from scanlens.models.novelty import SubspaceNovelty

    rng = np.random.default_rng(0)
    shape = np.linspace(1.0, 3.0, 40)
    train = rng.poisson(np.outer(rng.uniform(20, 60, 500), shape)).astype(np.float64)
    floor = 0.5 * train.mean(axis=1).min()
    plain = fit_subspace(_stabilised(train), components=2)
    floored = fit_subspace(_stabilised(train), components=2, counts_floor=floor)
    assert floored.counts_floor == floor
    # the mean counts come back from the stabilised features
    np.testing.assert_allclose(stabilised_mean_counts(_stabilised(train)), train.mean(axis=1), rtol=1e-12)
    own = _stabilised(rng.poisson(np.outer(rng.uniform(20, 60, 200), shape)).astype(np.float64))
    np.testing.assert_array_equal(floored.scores(own), plain.scores(own))  # all above the floor
    faint = _stabilised(np.full((3, 40), [[0.5 * floor], [0.25 * floor], [0.0]]))
    extra = floored.scores(faint) - plain.scores(faint)
    np.testing.assert_allclose(extra[:2], COUNTS_FLOOR_WEIGHT * np.log([2.0, 4.0]), rtol=1e-9)
    assert extra[2] == pytest.approx(float(counts_floor_penalty(np.array([1e-3]), floor)[0]))
    head = SubspaceNovelty(floored.mean, floored.basis, floored.residual_var, floor).eval()
    with torch.no_grad():
        got = head(torch.from_numpy(np.concatenate([own, faint]).astype(np.float32))).numpy()
    np.testing.assert_allclose(got, floored.scores(np.concatenate([own, faint])), rtol=1e-3, atol=1e-3)


def test_nearest_neighbour_head_measures_the_distance_to_its_bank() -> None:
    from scanlens.models.novelty import NearestNeighbourNovelty, fit_nearest_novelty

    rng = np.random.default_rng(1)
    bank = rng.normal(size=(64, 8)).astype(np.float32)
    head = NearestNeighbourNovelty(bank, k=1).eval()
    with torch.no_grad():
        on_bank = head(torch.from_numpy(bank)).numpy()
        shifted = head(torch.from_numpy(bank[:1] + np.float32(100.0))).numpy()
    assert np.all(on_bank < 1e-2)
    d = np.sqrt(((bank[:1] + 100.0 - bank) ** 2).sum(axis=1).min() / 8)
    assert shifted[0] == pytest.approx(d, rel=1e-4)
    fit = fit_nearest_novelty(bank, rng.normal(size=(400, 8)), bank=32, k=3, features="test", quantile=0.9)
    assert fit.calibration["n_fit"] == 32 and fit.calibration["heldout_flagged"] == pytest.approx(0.1, abs=0.01)
    assert fit.flagged(rng.normal(size=(100, 8)) + 10.0) == 1.0
