"""bepfm-mlp says when it cannot vouch for an answer (issue 11), through the real service.

Real sockets on loopback and the committed ONNX file: the card's held-out BE-PFM scan (simulator seed
999, never trained on) gets at most 2 % of its pixels flagged novel and no ``mostly_foreign`` event; each
kind of foreign band-excitation data (``scanlens.sim.foreign``: a disconnected tip, a free cantilever
mode, an electrostatic response with a linear phase, a hard ferroelectric film), drawn here with other
seeds than the card's figures and sent on the simulator's band as an instrument would send it, gets at
least 95 % flagged, the summary's ``novel_fraction`` and the event. The classifier's confidence is
checked independently: the expected calibration error (15 equal-width bins) of the service's
``confidence`` map on a scan of another seed, 16 384 pixels, is at most 0.03.
"""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.model_files import MODEL_DIR
from scanlens.models.scoring import expected_calibration_error
from scanlens.protocol.messages import Axis
from scanlens.sim.bepfm import COMPONENTS, DEFAULT_AXIS, BEPFMConfig, BEPFMSample
from scanlens.sim.foreign import (
    bepfm_cantilever_mode,
    bepfm_electrostatic,
    bepfm_flat_noise,
    bepfm_hard_ferroelectric,
)
from scanlens.testing import connected, loopback_settings, serving

from .model_checks import committed_card, foreign_events, recognize_scan

MODEL = "bepfm-mlp"
BEPFM_HELDOUT_SEED = 999  # bepfm-mlp's card: training.heldout_seed
ECE_SEED = 31  # another scan for the independent calibration check: not a training, calibration or held-out seed
FOREIGN = {"flat noise": bepfm_flat_noise, "cantilever mode": bepfm_cantilever_mode,
           "electrostatic": bepfm_electrostatic, "hard ferroelectric": bepfm_hard_ferroelectric}


def _lines(sample: BEPFMSample) -> np.ndarray:
    return np.stack([sample.line(r) for r in range(sample.cfg.rows)])



def test_the_seeds_here_are_not_the_cards() -> None:
    t = committed_card(MODEL_DIR / f"{MODEL}.onnx").training
    assert t["heldout_seed"] == BEPFM_HELDOUT_SEED
    assert ECE_SEED not in (*t["scan_seeds"], *t["calibration_seeds"], t["heldout_seed"])
    assert "seed=77" not in t["foreign_data"]


def test_foreign_generators_have_the_simulators_layout() -> None:
    rng = np.random.default_rng(5)
    own = BEPFMSample(BEPFMConfig(rows=2, cols=64, seed=3)).line(0)
    for kind, gen in FOREIGN.items():
        x = gen(64, rng)
        assert x.shape == own.shape == (64, DEFAULT_AXIS.size, 2) and x.dtype == own.dtype, kind
        assert np.all(np.isfinite(x)) and np.all(x[..., 0] >= 0), kind
    hz = Axis(size=50, offset=320_000.0, scale=1000.0, units="Hz")
    assert bepfm_flat_noise(3, rng, axis=hz).shape == (3, 50, 2)
    # the physics each one stands for: no resonance at all; a far sharper peak; a flat amplitude; a far
    # larger response than the training's (peak A0 Q of 15-60 a.u. at the default noise of 1 a.u.)
    flat = bepfm_flat_noise(256, rng)[..., 0]
    assert np.median(flat.max(axis=1) / np.median(flat, axis=1)) < 4
    cant = bepfm_cantilever_mode(256, rng)[..., 0]
    assert np.median(np.sum(cant > cant.max(axis=1, keepdims=True) / np.sqrt(2), axis=1)) <= 3  # bins above half power
    es = bepfm_electrostatic(256, rng)
    blocks = es[..., 0].reshape(256, 8, 16).mean(axis=2)  # mean amplitude in 8 sub-bands of 10 kHz
    assert np.all(blocks.max(axis=1) / blocks.min(axis=1) < 2)  # a resonance's peak is >= 5 x its tails
    bins = np.arange(DEFAULT_AXIS.size) - (DEFAULT_AXIS.size - 1) / 2
    slope = (es[..., 1] * bins).sum(axis=1) / (bins * bins).sum()  # rad per bin, least squares
    assert np.all((slope < -0.005) & (slope > -0.1))  # phase linear in f: 0.8-8 rad over the 80 kHz band
    assert np.all(bepfm_hard_ferroelectric(256, rng)[..., 0].max(axis=1) > 300)


@pytest.mark.timeout(300)
async def test_bepfm_mlp_flags_foreign_responses_and_not_its_own():
    settings = loopback_settings(MODEL_DIR, models=[MODEL])
    held = BEPFMSample(BEPFMConfig(seed=BEPFM_HELDOUT_SEED))  # the card's held-out scan: never trained on
    rng = np.random.default_rng(77)
    rows, cols = 16, 32
    async with serving(settings) as server, connected(server) as clients:
        result = await recognize_scan(clients, "own", "bepfm", _lines(held), held.cfg.axis, MODEL, components=COMPONENTS)
        novel = result.maps[MODEL]["novel"]
        assert novel.shape == (held.cfg.rows, held.cfg.cols)
        assert novel.mean() <= 0.02, novel.mean()
        assert result.summary.recognizers[MODEL].novel_fraction == pytest.approx(novel.mean())
        assert not foreign_events(result.events)
        for kind, gen in FOREIGN.items():
            lines = gen(rows * cols, rng).reshape(rows, cols, DEFAULT_AXIS.size, 2)
            result = await recognize_scan(clients, kind.replace(" ", "-"), "bepfm", lines, DEFAULT_AXIS, MODEL,
                                          components=COMPONENTS)
            flagged = result.maps[MODEL]["novel"].mean()
            assert flagged >= 0.95, (kind, flagged)
            assert result.summary.recognizers[MODEL].novel_fraction == pytest.approx(flagged)
            assert len(foreign_events(result.events)) == 1, kind


@pytest.mark.timeout(300)
async def test_bepfm_mlp_confidence_is_calibrated_through_the_service():
    settings = loopback_settings(MODEL_DIR, models=[MODEL])
    sample = BEPFMSample(BEPFMConfig(seed=ECE_SEED))
    async with serving(settings) as server, connected(server) as clients:
        result = await recognize_scan(clients, "calibration", "bepfm", _lines(sample), sample.cfg.axis, MODEL,
                                          components=COMPONENTS)
    maps = result.maps[MODEL]
    confidence, klass = maps["confidence"].reshape(-1), maps["class"].reshape(-1)
    assert confidence.size >= 10_000
    assert np.all((confidence > 0) & (confidence <= 1))
    ece = expected_calibration_error(confidence, klass == sample.label.reshape(-1))
    assert ece <= 0.03, ece
    assert maps["novel"].mean() <= 0.02  # an in-distribution scan of another seed is not flagged either
