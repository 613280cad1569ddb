"""The eels-fit physics fit: committed ONNX file and card, parity with numpy lstsq (and the novelty score),
exactness on noise-free spectra, the demo scan, unknown-phase detection by chi2 and by novelty, roc_auc, and a
rebuild."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest

from scanlens.sim.eels import (
    ALL_PHASES,
    DEFAULT_AXIS,
    PHASES,
    EELSConfig,
    EELSSample,
    expected_counts,
    simulate_spectra,
)
from scanlens.model_files import MODEL_DIR
from scanlens.models.export import make_session, read_card
from scanlens.models.physics_fit import (
    MODEL_AXIS,
    NOVELTY_COMPONENTS,
    OUTPUT_NAMES,
    WINDOWS,
    build,
    detection_score,
    evaluate,
    fit_numpy,
    graph_novelty,
    novelty_features,
    novelty_numpy,
    projection,
    references,
    roc_auc,
    run_onnx,
    scan_spectra,
)
from scanlens.models.subspace import COUNTS_FLOOR_WEIGHT
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import CARD_KEY, ModelCard
from .model_checks import check_novelty_card

MODEL_PATH = MODEL_DIR / "eels-fit.onnx"


def _to_model_axis(counts: np.ndarray, axis: Axis) -> np.ndarray:
    return AxisMap.build(axis, MODEL_AXIS).apply(counts)


@pytest.fixture(scope="module")
def demo_outputs() -> tuple[EELSSample, dict[str, np.ndarray]]:
    sample = EELSSample(EELSConfig())  # the demo: defaults, seed 0
    return sample, run_onnx(MODEL_PATH, scan_spectra(sample))


@pytest.fixture(scope="module")
def unknown_outputs() -> tuple[EELSSample, dict[str, np.ndarray]]:
    sample = EELSSample(EELSConfig(unknown_region=True))
    return sample, run_onnx(MODEL_PATH, scan_spectra(sample))


def _mixed_inputs() -> np.ndarray:
    """Demo-scan rows, random known and unknown mixtures at extreme doses, and an empty spectrum."""
    rng = np.random.default_rng(5)
    scan = EELSSample(EELSConfig(rows=4, unknown_region=True, seed=3))
    rows = scan_spectra(scan)
    a4 = rng.dirichlet(np.ones(4), 64)
    extreme = simulate_spectra(a4, DEFAULT_AXIS, dose=rng.uniform(1e3, 1e6, 64), read_noise=3.0, rng=rng)
    return np.concatenate([rows, _to_model_axis(extreme, DEFAULT_AXIS), np.zeros((1, 240), np.float32)])


# --------------------------------------------------------------------------- the committed model


def test_committed_model_loads_in_onnxruntime() -> None:
    assert MODEL_PATH.is_file() and MODEL_PATH.stat().st_size < 100_000
    proto = onnx.load(str(MODEL_PATH))
    onnx.checker.check_model(proto)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert {n.op_type for n in proto.graph.node} <= {"MatMul", "Sub", "Mul", "Max", "Add", "Div", "Sqrt", "ReduceSum",
                                                     "ReduceMean", "Log", "Relu"}  # the last three: the counts floor
    session = make_session(MODEL_PATH)
    (inp,) = session.get_inputs()
    assert inp.name == "spectra" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 240, "batch dimension is dynamic"
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    assert OUTPUT_NAMES == ("abundance", "chi2", "residual", "coefficients", "novelty")
    for n in (1, 7):
        out = session.run(None, {"spectra": np.full((n, 240), 300.0, np.float32)})
        assert [o.shape for o in out] == [(n, 3), (n, 2), (n, 2), (n, 3), (n,)]
        assert all(o.dtype == np.float32 and np.all(np.isfinite(o)) for o in out)


def test_committed_card_describes_the_model() -> None:
    card = read_card(MODEL_PATH)
    props = {p.key: p.value for p in onnx.load(str(MODEL_PATH)).metadata_props}
    assert ModelCard.model_validate_json(props[CARD_KEY]) == card
    assert (card.name, card.version, card.modality) == ("eels-fit", "1", "eels")
    assert card.architecture == "linear least squares (ONNX MatMul)"
    assert card.input.name == "spectra"
    assert card.input.axis == MODEL_AXIS == Axis(size=240, offset=5.0, scale=0.5, units="eV")
    by_name = {o.name: o for o in card.outputs}
    assert list(by_name) == ["abundance", "chi2", "residual", "coefficients", "novelty"]
    assert [o.role for o in card.outputs] == ["parameters"] * 4 + ["novelty"]
    assert by_name["abundance"].labels == list(PHASES) and by_name["abundance"].units == ["fraction"] * 3
    assert by_name["chi2"].labels == by_name["residual"].labels == ["plasmons", "chemistry"] == list(WINDOWS)
    assert by_name["coefficients"].labels == list(PHASES)
    assert card.training["generator"] == "none: reference spectra from instrument_sim.eels"
    assert card.training["heldout_seed"] == 999
    assert card.metrics["abundance_rmse"] <= 0.02
    assert card.metrics["chi2_auc"] >= 0.98
    assert 0.9 < card.metrics["chi2_median_plasmons"] < 1.1 and 0.9 < card.metrics["chi2_median_chemistry"] < 1.1
    assert card.metrics["novelty_auc"] >= 0.98


def test_committed_card_has_a_calibrated_novelty_section() -> None:
    """Held-out scan <= 2 % flagged, flat noise (also faint), another instrument and LAO >= 95 % each (issue 11), measured
    by the build on the graph itself; the subspace was fitted on simulated scans other than the held-out one."""
    card = read_card(MODEL_PATH)
    check_novelty_card(card)
    cal = card.novelty.calibration
    assert {k for k in cal if k.endswith("_flagged")} == {
        "heldout_flagged", "heldout_scan_flagged", "flat_noise_flagged", "other_instrument_flagged",
        "unknown_phase_flagged", "faint_flat_noise_flagged"}
    assert cal["counts_floor"] == pytest.approx(graph_novelty(MODEL_PATH).counts_floor, rel=1e-6)
    assert cal["components"] == NOVELTY_COMPONENTS == graph_novelty(MODEL_PATH).basis.shape[1]
    assert cal["n_fit"] == 50_000 and cal["n_heldout"] >= 40_000
    record = card.training["novelty"]
    assert 999 not in record["fit_scan_seeds"] + record["heldout_scan_seeds"], "the held-out scan is held out"
    assert not set(record["fit_scan_seeds"]) & set(record["heldout_scan_seeds"])
    assert "2 sqrt(counts + 3/8)" in card.novelty.method

def test_onnx_equals_the_numpy_lstsq_reference() -> None:
    x = _mixed_inputs()
    session = make_session(MODEL_PATH)
    ref = fit_numpy(x, graph_novelty(MODEL_PATH))
    for batch in (slice(0, 1), slice(0, 9), slice(None)):
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"spectra": x[batch]})))
        np.testing.assert_allclose(got["abundance"], ref["abundance"][batch], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["chi2"], ref["chi2"][batch], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["residual"], ref["residual"][batch], rtol=1e-4, atol=1e-7)
        scale = np.abs(ref["coefficients"][batch]).sum(axis=1, keepdims=True)
        assert np.all(np.abs(got["coefficients"] - ref["coefficients"][batch]) <= 1e-5 * scale + 1e-6)
        np.testing.assert_allclose(got["novelty"], ref["novelty"][batch], rtol=1e-4, atol=1e-5)
    # The empty spectrum: no signal, no misfit, no preference.
    np.testing.assert_allclose(ref["abundance"][-1], 1 / 3)
    assert np.all(ref["chi2"][-1] == 0) and np.all(ref["residual"][-1] == 0)


def test_numpy_reference_is_the_weighted_least_squares_solution() -> None:
    x = _mixed_inputs()[:20].astype(np.float64)
    ref = fit_numpy(x)
    np.testing.assert_allclose(ref["coefficients"], x @ projection(), rtol=1e-9, atol=1e-6)
    # Normal equations: the weighted residual is orthogonal to every reference.
    r = x - ref["coefficients"] @ references()
    w = 1.0 / references().mean(axis=0)
    assert np.abs((r * w) @ references().T).max() < 1e-6 * np.abs((x * w) @ references().T).max()
    with pytest.raises(ValueError):
        fit_numpy(np.zeros((2, 100)))
    assert "novelty" not in ref, "without the constants, no novelty score"


def test_numpy_novelty_is_the_subspace_distance_of_eels_mlps_features() -> None:
    """The reference score: eels-mlp's features (variance-stabilised counts), the residual off the stored
    subspace per channel over the residual variance, averaged, plus the counts floor's term below the floor;
    the shared numpy scorer agrees."""
    x = _mixed_inputs().astype(np.float64)
    k = graph_novelty(MODEL_PATH)
    f = 2.0 * np.sqrt(np.clip(x, 0.0, None) + 0.375)
    np.testing.assert_allclose(novelty_features(x), f, rtol=1e-12)
    assert k.mean.shape == k.residual_var.shape == (240,) and k.basis.shape == (240, NOVELTY_COMPONENTS)
    np.testing.assert_allclose(k.basis.T @ k.basis, np.eye(NOVELTY_COMPONENTS), atol=1e-5)  # orthonormal
    assert np.all(k.residual_var > 0)
    z = f - k.mean
    off = z - z @ k.basis @ k.basis.T
    floor = COUNTS_FLOOR_WEIGHT * np.maximum(0.0, np.log(k.counts_floor / np.maximum(np.clip(x, 0, None).mean(axis=1),
                                                                                      1e-3)))
    assert 0 < floor.sum() and floor[x.mean(axis=1) > k.counts_floor].max() == 0  # the inputs have faint spectra
    np.testing.assert_allclose(novelty_numpy(x, k), np.mean(off**2 / k.residual_var, axis=1) + floor, rtol=1e-10)
    pytest.importorskip("torch")
    from scanlens.models.eels import novelty_features as eels_features
    from scanlens.models.novelty import Subspace

    np.testing.assert_allclose(novelty_features(x), eels_features(x.astype(np.float32)), rtol=1e-6)
    shared = Subspace(k.mean, k.basis, k.residual_var, 0, k.counts_floor).scores(f)
    np.testing.assert_allclose(novelty_numpy(x, k), shared, rtol=1e-10)


# --------------------------------------------------------------------------- the physics


@pytest.mark.parametrize("axis", [MODEL_AXIS, DEFAULT_AXIS, Axis(size=1024, offset=0.0, scale=0.125, units="eV")])
def test_noise_free_mixtures_are_recovered_exactly(axis: Axis) -> None:
    rng = np.random.default_rng(1)
    pure_and_binary = [np.eye(3)[i] for i in range(3)] + [[0.5, 0.5, 0.0], [0.0, 0.3, 0.7], [0.9, 0.0, 0.1]]
    a = np.concatenate([np.array(pure_and_binary), rng.dirichlet(np.ones(3), 30)])
    for dose in (1.0e3, 1.0e5, 1.0e7):
        x = _to_model_axis(expected_counts(a, axis, dose), axis)
        out = run_onnx(MODEL_PATH, x)
        np.testing.assert_allclose(out["abundance"], a, atol=1e-3)
        assert out["chi2"].max() < 1e-3 and out["residual"].max() < 1e-4
        # The coefficients are the dose in counts per model channel per unit reference.
        total = dose * axis.scale / MODEL_AXIS.scale
        np.testing.assert_allclose(out["coefficients"], a * total, rtol=0, atol=1e-3 * total)


def test_noisy_known_spectra_have_chi2_near_one_at_any_dose_and_dispersion() -> None:
    rng = np.random.default_rng(2)
    a = rng.dirichlet(np.ones(3), 3000)
    fine = Axis(size=1024, offset=0.0, scale=0.125, units="eV")
    for axis, dose in ((DEFAULT_AXIS, 1e5), (DEFAULT_AXIS, 1e4), (fine, 3e5)):
        x = _to_model_axis(simulate_spectra(a, axis, dose=dose, read_noise=3.0, rng=rng), axis)
        chi2 = run_onnx(MODEL_PATH, x)["chi2"]
        np.testing.assert_allclose(chi2.mean(axis=0), 1.0, atol=0.05)
    # An axis whose channels fall between the model's: interpolation averages neighbours, chi2 drops, never rises.
    off = Axis(size=1024, offset=-1.93, scale=0.125, units="eV")
    x = _to_model_axis(simulate_spectra(a, off, dose=1e5, read_noise=3.0, rng=rng), off)
    mean = run_onnx(MODEL_PATH, x)["chi2"].mean(axis=0)
    assert np.all((mean > 0.4) & (mean < 1.0))


def test_pure_unknown_phase_is_far_outside_the_reference_set() -> None:
    a4 = np.array([[0.0, 0.0, 0.0, 1.0]])
    rng = np.random.default_rng(3)
    raw = simulate_spectra(np.repeat(a4, 200, axis=0), DEFAULT_AXIS, dose=1e5, read_noise=3.0, rng=rng)
    x = _to_model_axis(raw, DEFAULT_AXIS)
    out = run_onnx(MODEL_PATH, x)
    assert ALL_PHASES[3] == "LAO"
    assert np.all(out["chi2"] > 5.0), "both windows reject it"
    assert np.all(out["residual"][:, 1] > 0.03)


def test_demo_scan_abundances(demo_outputs: tuple[EELSSample, dict[str, np.ndarray]]) -> None:
    sample, out = demo_outputs
    rmse = float(np.sqrt(np.mean((out["abundance"] - sample.abundance.reshape(-1, 3)) ** 2)))
    assert rmse <= 0.02, rmse
    assert np.mean(out["abundance"].argmax(axis=1) == sample.phase.reshape(-1)) >= 0.99
    np.testing.assert_allclose(out["abundance"].sum(axis=1), 1.0, atol=1e-5)
    assert np.all(out["abundance"] >= 0)
    metrics = evaluate(out, sample)
    assert metrics["abundance_rmse"] == pytest.approx(rmse, rel=1e-6)
    assert "chi2_auc" not in metrics and "novelty_auc" not in metrics
    # a scan of its own kind (seed 0: neither fitted on nor the card's held-out scan) is not novel
    threshold = read_card(MODEL_PATH).novelty.threshold
    assert np.mean(out["novelty"] > threshold) <= 0.02
    assert 0.9 < metrics["chi2_median_plasmons"] < 1.1 and 0.9 < metrics["chi2_median_chemistry"] < 1.1


def test_chi2_reveals_the_unknown_region(unknown_outputs: tuple[EELSSample, dict[str, np.ndarray]]) -> None:
    sample, out = unknown_outputs
    labels = sample.unknown.reshape(-1) > 0.5
    assert 0.05 < labels.mean() < 0.15
    auc = roc_auc(detection_score(out), labels)
    assert auc >= 0.98, auc
    np.testing.assert_array_equal(detection_score(out), out["chi2"].astype(np.float64).sum(axis=1))
    for j in range(2):  # each window alone separates too
        assert roc_auc(out["chi2"][:, j], labels) >= 0.95
    metrics = evaluate(out, sample)
    assert metrics["chi2_auc"] == pytest.approx(auc)
    assert metrics["abundance_rmse"] <= 0.03, "known pixels keep their abundances"


def test_novelty_reveals_the_unknown_region(unknown_outputs: tuple[EELSSample, dict[str, np.ndarray]]) -> None:
    sample, out = unknown_outputs
    unknown = sample.unknown.reshape(-1)
    threshold = read_card(MODEL_PATH).novelty.threshold
    auc = roc_auc(out["novelty"], unknown > 0.5)
    assert auc >= 0.98, auc
    assert evaluate(out, sample)["novelty_auc"] == pytest.approx(auc)
    novel = out["novelty"] > threshold
    assert novel[unknown > 0.5].mean() >= 0.95, "LAO pixels are flagged"
    assert novel[unknown < 0.01].mean() <= 0.02, "pixels without LAO are not"


# --------------------------------------------------------------------------- roc_auc


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_on_hand_made_cases() -> None:
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 0.0
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([5.0, 5.0, 5.0]), np.array([True, False, True])) == 0.5, "all tied"
    # Ties between a positive and a negative count one half: (0.5 + 0 + 1 + 1) / 4.
    assert roc_auc(np.array([1.0, 1.0, 2.0, 3.0]), np.array([0, 1, 0, 1])) == 0.625
    assert roc_auc([[3, 1], [2, 1]], [[True, False], [True, False]]) == 1.0, "any shape, plain lists"
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40).astype(np.float64)  # many ties
        labels = rng.random(40) < 0.4
        assert roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)
    with pytest.raises(ValueError):
        roc_auc(np.array([1.0, 2.0]), np.array([True, True]))
    with pytest.raises(ValueError):
        roc_auc(np.array([1.0, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError):
        roc_auc(np.array([1.0, 2.0, 3.0]), np.array([True, False]))


# --------------------------------------------------------------------------- build


@pytest.mark.timeout(600)
def test_build_reproduces_the_committed_model(tmp_path: Path) -> None:
    """A rebuild (about a minute: the novelty data are simulated and fitted anew, seeded) gives the committed
    card and outputs; the novelty figures to float rounding (an SVD may differ in its last bits elsewhere)."""
    pytest.importorskip("torch")  # the novelty data come from scanlens.models.eels
    path = tmp_path / "eels-fit.onnx"
    events: list = []
    metrics = build(path, progress=events.append)
    assert {"data", "heldout", "novelty", "check", "export"} <= {e.stage for e in events}
    committed = read_card(MODEL_PATH)
    rebuilt = read_card(path)
    assert rebuilt.model_dump(exclude={"metrics", "novelty"}) == committed.model_dump(exclude={"metrics", "novelty"})
    assert rebuilt.novelty.model_dump(exclude={"threshold", "calibration"}) == committed.novelty.model_dump(
        exclude={"threshold", "calibration"})
    assert rebuilt.novelty.threshold == pytest.approx(committed.novelty.threshold, rel=1e-5)
    assert rebuilt.novelty.calibration.keys() == committed.novelty.calibration.keys()
    for key, value in committed.novelty.calibration.items():
        assert rebuilt.novelty.calibration[key] == pytest.approx(value, abs=1e-3), key
    assert set(metrics) == set(committed.metrics)
    for key, value in committed.metrics.items():
        if key.startswith("onnx_"):
            assert metrics[key] < 1e-4
        else:
            assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    x = _mixed_inputs()
    new, old = run_onnx(path, x), run_onnx(MODEL_PATH, x)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(new[name], old[name], rtol=1e-5 if name != "novelty" else 1e-4, atol=1e-6)
