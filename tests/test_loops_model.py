"""The loops-mlp recognizer: the committed ONNX file and its card, its accuracy on the demo scan, quick training
and ONNX/torch parity; the honesty figures of issue 11 (novelty, sigma calibrated on uniform draws) are computed
by the training code and stored in the card (their service-level checks: tests/test_novelty_loops.py)."""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.sim.loops import DEFAULT_AXIS, H_MAX, PARAM_UNITS, PARAMS, LoopsConfig, LoopsSample
from scanlens.model_files import MODEL_DIR
from scanlens.models.export import make_session, read_card
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis

from .model_checks import QuickRun, check_committed_file, check_onnx_matches_torch, check_progress_events
from .model_checks import check_novelty_card, committed_card, quick_run

MODEL_PATH = MODEL_DIR / "loops-mlp.onnx"
#: The novelty head's bank of training loops (scanlens.models.loops.NOVELTY_BANK x 128 float32) is most of the file.
MAX_BYTES = 3_000_000
MODEL_AXIS = DEFAULT_AXIS


def _scan(sample: LoopsSample) -> tuple[np.ndarray, np.ndarray]:
    """What the service feeds the model (every line through AxisMap onto the model axis) and the ground truth."""
    amap = AxisMap.build(sample.cfg.axis, MODEL_AXIS)
    x = np.concatenate([amap.apply(sample.line(r)) for r in range(sample.cfg.rows)])
    truth = np.stack([sample.params[p].reshape(-1) for p in PARAMS], axis=1)
    return x, truth


def _r2(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return 1.0 - np.mean((pred - truth) ** 2, axis=0) / np.var(truth, axis=0)


OUTPUTS = ["parameters", "uncertainty", "novelty"]
#: Issue 11's targets for the coverage of sigma on parameters drawn uniformly over the card's ranges.
COVERAGE1, COVERAGE2 = (0.68, 0.05), (0.95, 0.03)


def _check_outputs(params: np.ndarray, sigma: np.ndarray, *rest: np.ndarray) -> None:
    """(parameters, sigma[, novelty], batch size): shapes, dtype, finite, sigma and novelty score positive."""
    *novelty, n = rest
    for out in (params, sigma):
        assert out.shape == (n, 3) and out.dtype == np.float32
        assert np.all(np.isfinite(out))
    assert np.all(sigma > 0)
    for score in novelty:
        assert score.shape == (n,) and score.dtype == np.float32
        assert np.all(np.isfinite(score)) and np.all(score >= 0)


# --------------------------------------------------------------------------- the committed model (no torch)


def test_committed_model_loads_in_onnxruntime() -> None:
    session = check_committed_file(MODEL_PATH, MAX_BYTES)
    (inp,) = session.get_inputs()
    assert inp.name == "loops" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [64, 2], "batch dimension is dynamic"
    assert [o.name for o in session.get_outputs()] == OUTPUTS
    ramp = np.tanh(np.linspace(-3, 3, 64, dtype=np.float32))
    for n in (1, 5):
        x = np.repeat(np.stack([ramp - 0.3, ramp + 0.3], axis=-1)[None].clip(-1, 1), n, axis=0)
        _check_outputs(*session.run(None, {"loops": x}), n)


def test_committed_card_describes_the_model() -> None:
    card = committed_card(MODEL_PATH)
    assert (card.name, card.version, card.modality) == ("loops-mlp", "1", "loops")
    assert card.input.name == "loops"
    assert card.input.axis == MODEL_AXIS and card.input.axis.units == "a.u."
    assert card.input.components == ["up", "down"]
    assert "standardis" in card.input.normalization
    by_name = {o.name: o for o in card.outputs}
    assert list(by_name) == OUTPUTS
    assert [o.role for o in card.outputs] == ["parameters", "parameters", "novelty"]
    assert by_name["parameters"].labels == list(PARAMS)
    assert by_name["uncertainty"].labels == [f"sigma_{p}" for p in PARAMS]
    assert by_name["parameters"].units == list(PARAM_UNITS) == by_name["uncertainty"].units
    training = card.training
    assert training["generator"] == "instrument_sim.loops" and training["quick"] is False
    assert training["heldout_seed"] != 0 and training["n_samples"] >= 50_000
    assert any(Axis(**a) != MODEL_AXIS for a in training["source_axes"]), "trained through AxisMap from other axes"
    # The prior covers the demo sample's parameter ranges.
    cfg = LoopsConfig()
    for name, (lo, hi) in zip(PARAMS, (cfg.j0_range, cfg.dJ_levels, cfg.dh_levels)):
        parts = training["prior"][name]
        assert min(p[1] for p in parts) <= lo and max(p[2] for p in parts) >= hi
    for name in PARAMS:
        assert card.metrics[f"scan_r2_{name}"] >= 0.9
        assert 0.5 <= card.metrics[f"scan_within_1sigma_{name}"] <= 0.95
        assert card.metrics[f"prior_r2_{name}"] >= 0.8


def test_committed_card_has_honest_novelty_and_sigma() -> None:
    """Issue 11: the novelty figures pass, and sigma, calibrated on uniform draws over the card's ranges, covers
    0.68 +- 0.05 of the true values at 1 sigma and 0.95 +- 0.03 at 2 sigma on >= 2000 other uniform draws."""
    card = committed_card(MODEL_PATH)
    check_novelty_card(card)
    cal = card.novelty.calibration
    kinds = ("flat_noise", "linear_dielectric", "antiferroelectric", "imprinted", "outside_phase")
    assert all(cal[f"{k}_flagged"] >= 0.95 for k in kinds), cal
    assert 0 <= cal["heldout_uniform_flagged"] <= 1
    training, m = card.training, card.metrics
    assert training["n_calibration"] >= 2000 and training["n_uniform_eval"] >= 2000
    seeds = training["calibration_seeds"]
    assert len({*seeds.values(), training["data_seed"]}) == 4, "every held-out set has its own seed"
    assert set(training["uniform_ranges"]) == set(PARAMS)
    for name in PARAMS:
        assert np.isfinite(m[f"uniform_r2_{name}"]) and m[f"uniform_r2_{name}"] > 0.5
        (c1, d1), (c2, d2) = COVERAGE1, COVERAGE2
        assert abs(m[f"uniform_coverage1_{name}"] - c1) <= d1, (name, m[f"uniform_coverage1_{name}"])
        assert abs(m[f"uniform_coverage2_{name}"] - c2) <= d2, (name, m[f"uniform_coverage2_{name}"])
        assert m[f"sigma_scale_{name}"] > 0 and m[f"sigma_offset_{name}"] >= 0
        for prefix in ("prior", "scan"):  # the banded-prior figures with their coverage
            assert 0 < m[f"{prefix}_coverage1_{name}"] < m[f"{prefix}_coverage2_{name}"] <= 1


@pytest.fixture(scope="module")
def demo_scan() -> tuple[np.ndarray, np.ndarray]:
    sample = LoopsSample(LoopsConfig())
    sample.precompute(workers=2)
    return _scan(sample)


def test_committed_model_recognizes_the_demo_scan(demo_scan: tuple[np.ndarray, np.ndarray]) -> None:
    x, truth = demo_scan
    assert x.shape == (64 * 64, 64, 2)
    params, sigma, novelty = make_session(MODEL_PATH).run(None, {"loops": x})
    _check_outputs(params, sigma, novelty, len(x))
    r2 = _r2(params.astype(np.float64), truth)
    assert np.all(r2 >= 0.9), dict(zip(PARAMS, r2.round(3)))
    # The predicted uncertainty is roughly calibrated: about 2/3 of the errors lie within one sigma ...
    within = np.mean(np.abs(params - truth) <= sigma, axis=0)
    assert np.all((within > 0.5) & (within < 0.95)), within
    # ... and it is larger where the estimate is worse.
    err = np.abs(params - truth)
    for k in range(3):
        big = sigma[:, k] > np.median(sigma[:, k])
        assert err[big, k].mean() > err[~big, k].mean()


def test_committed_model_works_from_another_instrument_axis() -> None:
    axis = Axis(size=101, offset=-H_MAX, scale=2 * H_MAX / 100, units="a.u.")
    sample = LoopsSample(LoopsConfig(rows=24, axis=axis, seed=7))
    sample.precompute(workers=2)
    x, truth = _scan(sample)
    params, *_ = make_session(MODEL_PATH).run(None, {"loops": x})
    rmse = np.sqrt(np.mean((params - truth) ** 2, axis=0))
    spread = np.std(truth, axis=0)
    assert np.all(rmse < 0.45 * spread), dict(zip(PARAMS, (rmse / spread).round(3)))


# --------------------------------------------------------------------------- training (torch)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return quick_run("loops", tmp_path_factory)


def test_quick_training_exports_a_model_with_its_card(quick: QuickRun) -> None:
    assert quick.path.is_file() and quick.path.stat().st_size < MAX_BYTES
    card = read_card(quick.path)
    assert card.name == "loops-mlp" and card.input.axis == MODEL_AXIS and card.input.components == ["up", "down"]
    assert card.training["quick"] is True and card.training["n_samples"] >= 2000
    for name in PARAMS:
        assert {f"prior_r2_{name}", f"scan_r2_{name}", f"scan_within_1sigma_{name}"} <= set(card.metrics)
        assert np.isfinite(card.metrics[f"prior_r2_{name}"])
    assert card.metrics["prior_r2_J0"] > 0.3, "even a quick model learns the coupling"
    check_progress_events(quick.events, card.training["epochs"])
    data = [e for e in quick.events if e.stage == "data"]
    assert data[-1].step == data[-1].total


def test_quick_card_has_the_calibration_computed_by_training(quick: QuickRun) -> None:
    """The novelty section and the sigma calibration's figures are in the card, and the uniform figures are what
    the exported file gives on the training code's own evaluation draws."""
    from scanlens.models.loops import QUICK, calibration_sets, regression_metrics

    card = read_card(quick.path)
    nov = card.novelty
    assert nov is not None and nov.output == "novelty" and nov.threshold > 0
    assert [o.name for o in card.outputs] == OUTPUTS and card.outputs[2].role == "novelty"
    kinds = ("flat_noise", "linear_dielectric", "antiferroelectric", "imprinted", "outside_phase")
    expected = {"heldout_flagged", "heldout_scan_flagged", "heldout_prior_flagged", "heldout_uniform_flagged",
                *(f"{k}_flagged" for k in kinds)}
    assert expected <= set(nov.calibration)
    assert all(0.0 <= nov.calibration[k] <= 1.0 for k in expected)
    assert nov.calibration["flat_noise_flagged"] >= 0.9, "even a quick model's novelty head sees a dead channel"
    assert card.training["n_calibration"] == QUICK.n_calibration and "uniform" in card.training["calibration"]
    m = card.metrics
    for name in PARAMS:
        for key in ("uniform_r2", "uniform_rmse", "uniform_coverage1", "uniform_coverage2",
                    "uniform_coverage1_uncalibrated", "uniform_coverage2_uncalibrated", "prior_coverage2",
                    "scan_coverage2"):
            assert np.isfinite(m[f"{key}_{name}"]), key
        assert m[f"sigma_scale_{name}"] > 0 and m[f"sigma_offset_{name}"] >= 0
        # the calibration is fitted to the 1-sigma share on its own draws: on the others it is near it
        assert abs(m[f"uniform_coverage1_{name}"] - 0.683) < 0.15, m[f"uniform_coverage1_{name}"]
        assert m[f"uniform_coverage1_{name}"] <= m[f"uniform_coverage2_{name}"]
    # recompute the uniform figures from the exported file on the same draws: they are the card's
    x_eval, p_eval = calibration_sets(QUICK, seed=0, names=("uniform_eval",))["uniform_eval"]
    params, sigma, _ = make_session(quick.path).run(None, {"loops": x_eval})
    again = regression_metrics(params, sigma, p_eval, "uniform")
    for key, value in again.items():
        assert m[key] == pytest.approx(value, abs=2e-3), key


def test_quick_model_applies_the_sigma_calibration_in_the_graph(quick: QuickRun) -> None:
    """sigma = (a exp(logvar / 2) + b) * p_std with the fitted buffers, not the raw Gaussian head."""
    torch = pytest.importorskip("torch")
    model = quick.result.model
    assert not (torch.all(model.sigma_scale == 1) and torch.all(model.sigma_offset == 0)), "calibration was fitted"
    x, _ = _scan(LoopsSample(LoopsConfig(rows=1, cols=16, seed=21)))
    with torch.no_grad():
        _, logvar = model.raw(torch.from_numpy(x))
        expected = ((torch.exp(0.5 * logvar) * model.sigma_scale + model.sigma_offset) * model.p_std).numpy()
    _, sigma, _ = make_session(quick.path).run(None, {"loops": x})
    np.testing.assert_allclose(sigma, expected, rtol=1e-4, atol=1e-5)
    m = read_card(quick.path).metrics
    np.testing.assert_allclose(model.sigma_scale.numpy(), [m[f"sigma_scale_{p}"] for p in PARAMS], rtol=1e-6)


def test_quick_onnx_matches_torch_on_the_same_inputs(quick: QuickRun) -> None:
    rng = np.random.default_rng(11)
    scan, _ = _scan(LoopsSample(LoopsConfig(rows=2, cols=16, seed=21)))
    odd = np.stack([
        np.zeros((64, 2)), np.ones((64, 2)), -np.ones((64, 2)), rng.uniform(-1.5, 1.5, (64, 2)),
    ]).astype(np.float32)
    inputs = np.concatenate([scan, odd])
    check_onnx_matches_torch(quick, inputs, "loops", OUTPUTS, _check_outputs)


def test_resample_is_the_services_axis_map() -> None:
    pytest.importorskip("torch")
    from scanlens.models.loops import TRAIN_AXES, resample

    rng = np.random.default_rng(0)
    assert any(ax != MODEL_AXIS for ax in TRAIN_AXES)
    for axis in TRAIN_AXES:
        x = rng.uniform(-1, 1, (5, axis.size, 2)).astype(np.float32)
        got = resample(x, axis)
        assert got.shape == (5, 64, 2)
        src = axis.offset + axis.scale * np.arange(axis.size)
        dst = MODEL_AXIS.offset + MODEL_AXIS.scale * np.arange(64)
        for c in range(2):
            ref = np.stack([np.interp(dst, src, s) for s in x[..., c]])
            np.testing.assert_allclose(got[..., c], ref, atol=1e-5)


def test_training_data_is_deterministic_and_follows_the_prior() -> None:
    pytest.importorskip("torch")
    from scanlens.models.loops import PRIOR, Recipe, build_dataset, sample_prior

    tiny = Recipe(n_loops=40, n_val=8, epochs=1, heldout_shape=(2, 2), workers=1)
    x1, y1 = build_dataset(tiny, seed=3)
    x2, y2 = build_dataset(tiny, seed=3)
    x3, _ = build_dataset(tiny, seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (48, 64, 2) and x1.dtype == np.float32 and y1.shape == (48, 3)
    draws = sample_prior(np.random.default_rng(0), 20_000)
    for k, name in enumerate(PARAMS):
        lo = min(p[1] for p in PRIOR[name])
        hi = max(p[2] for p in PRIOR[name])
        assert draws[:, k].min() >= lo and draws[:, k].max() <= hi
        assert draws[:, k].max() - draws[:, k].min() > 0.95 * (hi - lo)
