"""The loops-mlp recognizer: the committed ONNX file and its card, its accuracy on the demo scan, quick training
and ONNX/torch parity."""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.sim.loops import DEFAULT_AXIS, H_MAX, PARAM_UNITS, PARAMS, LoopsConfig, LoopsSample
from scanlens.model_files import MODEL_DIR
from scanlens.models.export import make_session, read_card
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis

from .model_checks import QuickRun, check_committed_file, check_onnx_matches_torch, check_progress_events
from .model_checks import committed_card, quick_run

MODEL_PATH = MODEL_DIR / "loops-mlp.onnx"
MODEL_AXIS = DEFAULT_AXIS


def _scan(sample: LoopsSample) -> tuple[np.ndarray, np.ndarray]:
    """What the service feeds the model (every line through AxisMap onto the model axis) and the ground truth."""
    amap = AxisMap.build(sample.cfg.axis, MODEL_AXIS)
    x = np.concatenate([amap.apply(sample.line(r)) for r in range(sample.cfg.rows)])
    truth = np.stack([sample.params[p].reshape(-1) for p in PARAMS], axis=1)
    return x, truth


def _r2(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return 1.0 - np.mean((pred - truth) ** 2, axis=0) / np.var(truth, axis=0)


def _check_outputs(params: np.ndarray, sigma: np.ndarray, n: int) -> None:
    for out in (params, sigma):
        assert out.shape == (n, 3) and out.dtype == np.float32
        assert np.all(np.isfinite(out))
    assert np.all(sigma > 0)


# --------------------------------------------------------------------------- the committed model (no torch)


def test_committed_model_loads_in_onnxruntime() -> None:
    session = check_committed_file(MODEL_PATH)
    (inp,) = session.get_inputs()
    assert inp.name == "loops" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [64, 2], "batch dimension is dynamic"
    assert [o.name for o in session.get_outputs()] == ["parameters", "uncertainty"]
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
    assert list(by_name) == ["parameters", "uncertainty"]
    assert all(o.role == "parameters" for o in card.outputs)
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


@pytest.fixture(scope="module")
def demo_scan() -> tuple[np.ndarray, np.ndarray]:
    sample = LoopsSample(LoopsConfig())
    sample.precompute(workers=2)
    return _scan(sample)


def test_committed_model_recognizes_the_demo_scan(demo_scan: tuple[np.ndarray, np.ndarray]) -> None:
    x, truth = demo_scan
    assert x.shape == (64 * 64, 64, 2)
    params, sigma = make_session(MODEL_PATH).run(None, {"loops": x})
    _check_outputs(params, sigma, len(x))
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
    params, _ = make_session(MODEL_PATH).run(None, {"loops": x})
    rmse = np.sqrt(np.mean((params - truth) ** 2, axis=0))
    spread = np.std(truth, axis=0)
    assert np.all(rmse < 0.45 * spread), dict(zip(PARAMS, (rmse / spread).round(3)))


# --------------------------------------------------------------------------- training (torch)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return quick_run("loops", tmp_path_factory)


def test_quick_training_exports_a_model_with_its_card(quick: QuickRun) -> None:
    assert quick.path.is_file() and quick.path.stat().st_size < 1_000_000
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


def test_quick_onnx_matches_torch_on_the_same_inputs(quick: QuickRun) -> None:
    rng = np.random.default_rng(11)
    scan, _ = _scan(LoopsSample(LoopsConfig(rows=2, cols=16, seed=21)))
    odd = np.stack([
        np.zeros((64, 2)), np.ones((64, 2)), -np.ones((64, 2)), rng.uniform(-1.5, 1.5, (64, 2)),
    ]).astype(np.float32)
    inputs = np.concatenate([scan, odd])
    check_onnx_matches_torch(quick, inputs, "loops", ["parameters", "uncertainty"], _check_outputs)


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
