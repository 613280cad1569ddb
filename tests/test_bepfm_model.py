"""The bepfm-mlp recognizer: committed ONNX file and card, demo-scan accuracy, quick training, ONNX/torch parity,
and its honesty figures (issue 11): calibrated confidence and the novelty section, computed by the training code."""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.sim.bepfm import CLASSES, DEFAULT_AXIS, BEPFMConfig, BEPFMSample, axis_frequencies
from scanlens.model_files import MODEL_DIR
from scanlens.models.export import make_session, read_card
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis

from .model_checks import QuickRun, check_committed_file, check_novelty_card, check_onnx_matches_torch
from .model_checks import check_progress_events, committed_card, quick_run

MODEL_PATH = MODEL_DIR / "bepfm-mlp.onnx"
MODEL_AXIS = Axis(size=112, offset=316.0, scale=0.6, units="kHz")


def _scan(sample: BEPFMSample) -> np.ndarray:
    """What the service does: every line mapped onto the model axis, ``[rows * cols, 112, 2]``."""
    amap = AxisMap.build(sample.cfg.axis, MODEL_AXIS)
    return np.concatenate([amap.apply(sample.line(r)) for r in range(sample.cfg.rows)])


def _check_probs(probs: np.ndarray, n: int) -> None:
    assert probs.shape == (n, 3) and probs.dtype == np.float32
    assert np.all(np.isfinite(probs)) and np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _check_outputs(probs: np.ndarray, novelty: np.ndarray, n: int) -> None:
    _check_probs(probs, n)
    assert novelty.shape == (n,) and novelty.dtype == np.float32
    assert np.all(np.isfinite(novelty)) and np.all(novelty >= 0)


# --------------------------------------------------------------------------- the committed model (no torch)


def test_committed_model_loads_in_onnxruntime() -> None:
    session = check_committed_file(MODEL_PATH)
    (inp,) = session.get_inputs()
    assert inp.name == "response" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [112, 2], "batch dimension is dynamic"
    assert [o.name for o in session.get_outputs()] == ["probabilities", "novelty"]
    for n in (1, 5):
        x = np.zeros((n, 112, 2), dtype=np.float32)
        x[..., 0] = 3.0
        probs, novelty = session.run(None, {"response": x})
        _check_outputs(probs, novelty, n)


def test_committed_card_describes_the_model() -> None:
    card = committed_card(MODEL_PATH)
    assert (card.name, card.version, card.modality) == ("bepfm-mlp", "1", "bepfm")
    assert card.input.name == "response"
    assert card.input.axis == MODEL_AXIS
    assert card.input.components == ["amplitude", "phase"]
    assert "asinh" in card.input.normalization
    out, nov = card.outputs
    assert out.name == "probabilities" and out.role == "class_probabilities"
    assert out.labels == list(CLASSES)
    assert nov.name == "novelty" and nov.role == "novelty"
    t = card.training
    assert t["generator"] == "instrument_sim.bepfm" and t["quick"] is False
    assert 0 not in t["scan_seeds"] and t["heldout_seed"] not in t["scan_seeds"]
    assert len(t["source_axes"]) >= 2 and DEFAULT_AXIS.model_dump() in t["source_axes"]
    assert t["n_samples"] > 50_000
    assert card.metrics["accuracy"] >= 0.98
    assert card.metrics["balanced_accuracy"] >= 0.97


def test_committed_card_has_calibrated_confidence_and_novelty() -> None:
    card = committed_card(MODEL_PATH)
    m, t = card.metrics, card.training
    # confidence: ECE (15 bins) on >= 10 000 held-out pixels, after the temperature fitted on other scans
    assert m["ece"] <= 0.03 and m["ece_pixels"] >= 10_000, m
    assert np.isfinite(m["ece_uncalibrated"]) and m["temperature"] > 0
    cal = t["calibration_seeds"]
    assert cal and not set(cal) & set(t["scan_seeds"]) and t["heldout_seed"] not in cal
    assert str(t["heldout_seed"]) in t["calibration"] and "temperature" in t["calibration"]
    # novelty: <= 2 % of the held-out scan, >= 95 % of each foreign kind (all four of them) flagged
    check_novelty_card(card)
    flagged = {k for k in card.novelty.calibration if k.endswith("_flagged") and not k.startswith("heldout")}
    assert flagged == {"flat_noise_flagged", "cantilever_mode_flagged", "electrostatic_flagged",
                       "hard_ferroelectric_flagged"}
    assert card.novelty.calibration["n_heldout"] >= 3 * 128 * 128


def test_committed_model_novelty_on_the_demo_scan_and_on_a_flat_response() -> None:
    sample = BEPFMSample(BEPFMConfig())  # the demo scan, never trained on
    card = committed_card(MODEL_PATH)
    session = make_session(MODEL_PATH)
    _, novelty = session.run(None, {"response": _scan(sample)})
    assert np.mean(novelty > card.novelty.threshold) <= 0.02
    flat = np.zeros((4, 112, 2), np.float32)
    flat[..., 0] = np.array([0.5, 1.0, 2.0, 4.0])[:, None]  # no resonance: a constant amplitude, a.u.
    _, novelty = session.run(None, {"response": flat})
    assert np.all(novelty > card.novelty.threshold)


def test_model_axis_lies_inside_the_simulator_band() -> None:
    assert MODEL_AXIS.offset >= DEFAULT_AXIS.offset and MODEL_AXIS.end <= DEFAULT_AXIS.end
    assert not AxisMap.build(DEFAULT_AXIS, MODEL_AXIS).identity


def test_committed_model_recognizes_the_demo_scan() -> None:
    sample = BEPFMSample(BEPFMConfig())  # the demo: defaults, seed 0, never used in training
    x = _scan(sample)
    probs, _ = make_session(MODEL_PATH).run(None, {"response": x})
    _check_probs(probs, x.shape[0])
    pred, truth = probs.argmax(axis=1), sample.label.reshape(-1)
    accuracy = float(np.mean(pred == truth))
    assert accuracy >= 0.97, accuracy
    for k in range(len(CLASSES)):
        assert np.mean(pred[truth == k] == k) >= 0.95, CLASSES[k]
    # Every class is found, in roughly its true share of the scan.
    true_share = np.bincount(truth, minlength=3) / truth.size
    found_share = np.bincount(pred, minlength=3) / truth.size
    np.testing.assert_allclose(found_share, true_share, atol=0.01)


def test_committed_model_tolerates_other_axes_and_noise() -> None:
    session = make_session(MODEL_PATH)
    for cfg in (
        BEPFMConfig(rows=48, axis=Axis(size=200, offset=300_000.0, scale=450.0, units="Hz"), seed=4),
        BEPFMConfig(rows=48, noise=1.5, seed=5),
    ):
        sample = BEPFMSample(cfg)
        probs, _ = session.run(None, {"response": _scan(sample)})
        assert np.mean(probs.argmax(axis=1) == sample.label.reshape(-1)) >= 0.97


# --------------------------------------------------------------------------- training (torch)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return quick_run("bepfm", tmp_path_factory)


def test_quick_training_exports_a_model_with_its_card(quick: QuickRun) -> None:
    assert quick.path.is_file() and quick.path.stat().st_size < 1_000_000
    card = read_card(quick.path)
    assert card.name == "bepfm-mlp" and card.input.axis == MODEL_AXIS
    assert card.input.components == ["amplitude", "phase"]
    assert card.training["quick"] is True and card.training["n_samples"] > 5_000
    assert set(card.training["class_counts"]) == set(CLASSES)
    assert {"accuracy", "balanced_accuracy", "rim_accuracy", "final_train_loss"} <= set(card.metrics)
    assert card.metrics["accuracy"] > 0.9
    # honesty figures computed by this run's training code (a quick run: looser bounds than the shipped card's)
    assert {"ece", "ece_uncalibrated", "temperature", "ece_pixels"} <= set(card.metrics)
    assert card.metrics["ece_pixels"] >= 10_000 and card.metrics["ece"] <= 0.05
    assert card.metrics["temperature"] == pytest.approx(float(quick.result.model.temperature))
    assert card.novelty == quick.result.novelty.spec()
    check_novelty_card(card, heldout_at_most=0.05, foreign_at_least=0.9)
    check_progress_events(quick.events, card.training["epochs"])


def test_quick_onnx_matches_torch_on_the_same_inputs(quick: QuickRun) -> None:
    rng = np.random.default_rng(11)
    scan = _scan(BEPFMSample(BEPFMConfig(rows=8, seed=21)))
    odd = np.zeros((3, 112, 2), np.float32)  # all zero, huge amplitude, wrapped-looking phase
    odd[1, :, 0] = 1e4
    odd[2, :, 1] = rng.uniform(-np.pi, np.pi, 112)
    from scanlens.models.bepfm import foreign_data

    foreign = np.concatenate([x[:8] for x in foreign_data(n=8, seed=12).values()])  # large novelty scores
    inputs = np.concatenate([scan, odd, foreign])
    check_onnx_matches_torch(quick, inputs, "response", ["probabilities", "novelty"], _check_outputs)


def test_resample_equals_np_interp_per_component() -> None:
    pytest.importorskip("torch")
    from scanlens.models.bepfm import TRAIN_AXES, resample

    rng = np.random.default_rng(0)
    dst = axis_frequencies(MODEL_AXIS)
    for axis in TRAIN_AXES:
        src = axis_frequencies(axis)
        x = rng.uniform(0, 50, (5, axis.size, 2)).astype(np.float32)
        got = resample(x, axis)
        assert got.shape == (5, 112, 2) and got.dtype == np.float32
        for c in range(2):
            want = np.stack([np.interp(dst, src, s[:, c]) for s in x])
            np.testing.assert_allclose(got[..., c], want, rtol=1e-5, atol=1e-4)


def test_training_data_is_deterministic_and_labelled() -> None:
    pytest.importorskip("torch")
    from scanlens.models.bepfm import Recipe, build_dataset

    tiny = Recipe(n_scans=1, bg_keep=0.1, epochs=1)
    x1, y1, s1 = build_dataset(tiny, seed=3)
    x2, y2, _ = build_dataset(tiny, seed=3)
    x3, _, s3 = build_dataset(tiny, seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert s1 != s3 and not np.array_equal(x1[:100], x3[:100])
    assert all(s >= 1000 for s in s1 + s3)
    assert x1.ndim == 3 and x1.shape[1:] == (112, 2) and x1.dtype == np.float32
    assert set(np.unique(y1)) == {0, 1, 2}
    assert np.mean(y1 > 0) > 0.3, "substrate pixels are thinned out, cells and rims kept"
