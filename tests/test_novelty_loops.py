"""loops-mlp says when it cannot vouch for an answer (issue 11), through the real service and the committed file.

Through the real service (real sockets on loopback, the committed ONNX file): the held-out scan of the loops
simulator (the card's ``training.heldout_seed``) has at most 2 % of its pixels flagged novel, no
``mostly_foreign`` event, and the summary's ``novel_fraction`` is the map's mean; each kind of foreign loop
(``scanlens.sim.foreign``: a dead channel, a linear dielectric, an antiferroelectric double loop, an imprinted
loop, a hard ferroelectric outside the prior with J0 5-8 k_B T), drawn here with other seeds than the card's
figures, is at least 95 % flagged, with the event.

And, independently of the training code: sigma's coverage on 2000 parameter sets drawn uniformly over the
card's ranges (another seed than the card's calibration and evaluation draws), simulated on the simulator's own
axis with noise over the card's training noise range, run through ONNX Runtime: 0.68 +- 0.05 within 1 sigma,
0.95 +- 0.03 within 2 sigma, per parameter.
"""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.model_files import MODEL_DIR
from scanlens.models.export import make_session, read_card
from scanlens.models.scoring import interval_coverage
from scanlens.sim.foreign import (loops_antiferroelectric, loops_flat_noise, loops_imprinted, loops_linear_dielectric,
                                  loops_outside_phase)
from scanlens.sim.loops import COMPONENTS, DEFAULT_AXIS, PARAMS, LoopsConfig, LoopsSample, simulate_loops_parallel
from scanlens.testing import connected, loopback_settings, serving

from .model_checks import foreign_events, recognize_scan

MODEL_PATH = MODEL_DIR / "loops-mlp.onnx"
HELDOUT_SEED = 999  # loops-mlp's card: training.heldout_seed
COVERAGE_SEED = 6060  # not one of the card's calibration_seeds (checked below)



@pytest.mark.timeout(300)
async def test_loops_mlp_flags_foreign_loops_and_not_its_own():
    assert read_card(MODEL_PATH).training["heldout_seed"] == HELDOUT_SEED
    held = LoopsSample(LoopsConfig(seed=HELDOUT_SEED))  # the card's held-out scan: never trained on
    held.precompute(workers=2)
    own = np.stack([held.line(r) for r in range(held.cfg.rows)])
    rng = np.random.default_rng(78)
    rows, cols = 16, 32
    n = rows * cols
    foreign = {
        "dead channel": loops_flat_noise(n, rng),
        "linear dielectric": loops_linear_dielectric(n, rng),
        "antiferroelectric": loops_antiferroelectric(n, rng),
        "imprinted": loops_imprinted(n, rng),
        "hard ferroelectric": loops_outside_phase(n // 2, rng),  # half a scan: the simulator is slow
    }
    async with serving(loopback_settings(MODEL_DIR, models=["loops-mlp"])) as server, connected(server) as clients:
        result = await recognize_scan(clients, "own", "loops", own, DEFAULT_AXIS, "loops-mlp", components=COMPONENTS, timeout=120)
        maps = result.maps["loops-mlp"]
        novel = maps["novel"]
        assert novel.shape == (held.cfg.rows, held.cfg.cols)
        assert novel.mean() <= 0.02, novel.mean()
        assert result.summary.recognizers["loops-mlp"].novel_fraction == pytest.approx(novel.mean())
        assert not foreign_events(result.events)
        truth = np.stack([held.params[p] for p in PARAMS], axis=-1)
        r2 = 1 - np.mean((maps["parameters"] - truth) ** 2, axis=(0, 1)) / np.var(truth, axis=(0, 1))
        assert np.all(r2 >= 0.9), dict(zip(PARAMS, r2.round(3)))  # novelty costs nothing on its own data
        for kind, loops in foreign.items():
            result = await recognize_scan(clients, kind.replace(" ", "-"), "loops", loops.reshape(-1, cols, *loops.shape[1:]),
                                          DEFAULT_AXIS, "loops-mlp", components=COMPONENTS, timeout=120)
            flagged = result.maps["loops-mlp"]["novel"].mean()
            assert flagged >= 0.95, (kind, flagged)
            assert result.summary.recognizers["loops-mlp"].novel_fraction == pytest.approx(flagged)
            assert len(foreign_events(result.events)) == 1, kind


@pytest.mark.timeout(300)
def test_sigma_covers_uniform_draws_over_the_cards_ranges():
    card = read_card(MODEL_PATH)
    assert COVERAGE_SEED not in card.training["calibration_seeds"].values()
    ranges = card.training["uniform_ranges"]
    lo_noise, hi_noise = card.training["noise_range"]
    n = 2000
    rng = np.random.default_rng(COVERAGE_SEED)
    params = np.stack([rng.uniform(*ranges[p], n) for p in PARAMS], axis=1)
    clean = simulate_loops_parallel(*params.T, axis=DEFAULT_AXIS, seed=COVERAGE_SEED, workers=2)
    loops = (clean + rng.uniform(lo_noise, hi_noise, (n, 1, 1)) * rng.standard_normal(clean.shape)).astype(np.float32)
    mean, sigma, _ = make_session(MODEL_PATH).run(None, {"loops": loops})
    cov1 = interval_coverage(params, mean, sigma, 1.0)
    cov2 = interval_coverage(params, mean, sigma, 2.0)
    report = {p: (round(float(a), 3), round(float(b), 3)) for p, a, b in zip(PARAMS, cov1, cov2)}
    assert np.all(np.abs(cov1 - 0.68) <= 0.05), report
    assert np.all(np.abs(cov2 - 0.95) <= 0.03), report
