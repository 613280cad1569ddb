"""The eels-mlp recognizer: the committed ONNX file and its card, quick training, ONNX/torch parity, the CLI."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from scanlens.sim.eels import DEFAULT_AXIS, PHASES, EELSConfig, EELSSample, axis_energies, simulate_spectra
from scanlens.model_files import MODEL_DIR
from scanlens.models.cli import app
from scanlens.models.export import ParityError, TrainProgress, check_parity, make_session, read_card
from scanlens.protocol.messages import Axis

from .model_checks import QuickRun, check_committed_file, check_onnx_matches_torch, check_progress_events
from .model_checks import check_novelty_card, committed_card, quick_run

MODEL_PATH = MODEL_DIR / "eels-mlp.onnx"
MODEL_AXIS = Axis(size=240, offset=5.0, scale=0.5, units="eV")


def _to_model_axis(counts: np.ndarray, axis: Axis) -> np.ndarray:
    """What the service does: np.interp of every spectrum at the model's channel positions."""
    src, dst = axis_energies(axis), axis_energies(MODEL_AXIS)
    return np.stack([np.interp(dst, src, s) for s in counts]).astype(np.float32)


def _check_outputs(probs: np.ndarray, abundance: np.ndarray, novelty: np.ndarray, n: int) -> None:
    for out in (probs, abundance):
        assert out.shape == (n, 3) and out.dtype == np.float32
        assert np.all(out >= 0) and np.all(np.isfinite(out))
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert novelty.shape == (n,) and novelty.dtype == np.float32 and np.all(novelty >= 0)


# --------------------------------------------------------------------------- the committed model (no torch)


def test_committed_model_loads_in_onnxruntime() -> None:
    session = check_committed_file(MODEL_PATH)
    assert session.get_providers() == ["CPUExecutionProvider"]
    (inp,) = session.get_inputs()
    assert inp.name == "spectra" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 240, "batch dimension is dynamic"
    assert [o.name for o in session.get_outputs()] == ["probabilities", "abundance", "novelty"]
    for n in (1, 5):
        x = np.full((n, 240), 300.0, dtype=np.float32)
        probs, abundance, novelty = session.run(None, {"spectra": x})
        _check_outputs(probs, abundance, novelty, n)


def test_committed_card_describes_the_model() -> None:
    card = committed_card(MODEL_PATH)
    assert (card.name, card.version, card.modality) == ("eels-mlp", "1", "eels")
    assert card.input.name == "spectra"
    assert card.input.axis == MODEL_AXIS
    assert "sum" in card.input.normalization
    by_name = {o.name: o for o in card.outputs}
    assert list(by_name) == ["probabilities", "abundance", "novelty"]
    assert by_name["probabilities"].role == "class_probabilities"
    assert by_name["probabilities"].labels == list(PHASES)
    assert by_name["abundance"].role == "parameters"
    assert by_name["abundance"].labels == list(PHASES)
    assert by_name["abundance"].units == ["fraction"] * 3
    assert card.training["generator"] == "instrument_sim.eels"
    assert card.training["quick"] is False
    assert 0 not in card.training["scan_seeds"] and card.training["heldout_seed"] not in card.training["scan_seeds"]
    assert card.metrics["phase_accuracy"] >= 0.99
    assert card.metrics["abundance_rmse"] <= 0.05
    # honesty, computed by the training code (issue 11): calibrated confidence, novelty on foreign data
    assert card.metrics["ece"] <= 0.03 and card.metrics["temperature"] > 0
    check_novelty_card(card)


def test_committed_model_recognizes_the_demo_scan() -> None:
    sample = EELSSample(EELSConfig())  # the demo: defaults, seed 0, never used in training
    x = np.concatenate([_to_model_axis(sample.line(r), sample.cfg.axis) for r in range(sample.cfg.rows)])
    probs, abundance, novelty = make_session(MODEL_PATH).run(None, {"spectra": x})
    _check_outputs(probs, abundance, novelty, x.shape[0])
    accuracy = float(np.mean(probs.argmax(axis=1) == sample.phase.reshape(-1)))
    rmse = float(np.sqrt(np.mean((abundance - sample.abundance.reshape(-1, 3)) ** 2)))
    assert accuracy >= 0.99, accuracy
    assert rmse <= 0.05, rmse
    # Every phase is found, in roughly its true share of the scan.
    true_share = np.bincount(sample.phase.reshape(-1), minlength=3) / x.shape[0]
    found_share = np.bincount(probs.argmax(axis=1), minlength=3) / x.shape[0]
    np.testing.assert_allclose(found_share, true_share, atol=0.01)


def test_committed_model_tolerates_other_axes_and_drift() -> None:
    session = make_session(MODEL_PATH)
    for cfg in (
        EELSConfig(rows=48, axis=Axis(size=1024, offset=0.0, scale=0.125, units="eV"), seed=4),
        EELSConfig(rows=48, drift_eV=0.6, seed=5),
    ):
        sample = EELSSample(cfg)
        x = np.concatenate([_to_model_axis(sample.line(r), cfg.axis) for r in range(cfg.rows)])
        probs, abundance, _ = session.run(None, {"spectra": x})
        assert np.mean(probs.argmax(axis=1) == sample.phase.reshape(-1)) >= 0.98
        assert np.sqrt(np.mean((abundance - sample.abundance.reshape(-1, 3)) ** 2)) <= 0.05


def test_parity_check_rejects_a_mismatch() -> None:
    session = make_session(MODEL_PATH)
    x = np.full((4, 240), 250.0, dtype=np.float32)
    probs, abundance, _ = session.run(None, {"spectra": x})
    assert check_parity(session, {"probabilities": probs, "abundance": abundance}, {"spectra": x}) == 0.0
    with pytest.raises(ParityError):
        check_parity(session, {"probabilities": probs + 1e-3}, {"spectra": x})


# --------------------------------------------------------------------------- training (torch)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return quick_run("eels", tmp_path_factory)


def test_quick_training_exports_a_model_with_its_card(quick: QuickRun) -> None:
    assert quick.path.is_file() and quick.path.stat().st_size < 1_000_000
    card = read_card(quick.path)
    assert card.name == "eels-mlp" and card.input.axis == MODEL_AXIS
    assert card.training["quick"] is True and card.training["n_samples"] > 10_000
    assert set(card.metrics) >= {"phase_accuracy", "abundance_rmse"}
    assert card.metrics["phase_accuracy"] > 0.9 and card.metrics["abundance_rmse"] < 0.1
    assert {"ece", "ece_uncalibrated", "temperature"} <= set(card.metrics)
    check_novelty_card(card, heldout_at_most=0.05, foreign_at_least=0.9)
    check_progress_events(quick.events, card.training["epochs"])


def test_quick_onnx_matches_torch_on_the_same_inputs(quick: QuickRun) -> None:
    rng = np.random.default_rng(11)
    scan = EELSSample(EELSConfig(rows=8, seed=21))
    spectra = np.concatenate([_to_model_axis(scan.line(r), scan.cfg.axis) for r in range(8)])
    mix = rng.dirichlet(np.ones(3), 64)
    extreme = simulate_spectra(mix, DEFAULT_AXIS, dose=rng.uniform(1e3, 1e6, 64), read_noise=3.0, rng=rng)
    inputs = np.concatenate([spectra, _to_model_axis(extreme, DEFAULT_AXIS), np.zeros((1, 240), np.float32)])
    check_onnx_matches_torch(quick, inputs, "spectra", ["probabilities", "abundance", "novelty"], _check_outputs)


def test_resample_equals_np_interp() -> None:
    pytest.importorskip("torch")
    from scanlens.models.eels import TRAIN_AXES, resample

    rng = np.random.default_rng(0)
    for axis in (*TRAIN_AXES, Axis(size=400, offset=4.1, scale=0.37, units="eV")):
        x = rng.uniform(0, 500, (6, axis.size)).astype(np.float32)
        np.testing.assert_allclose(resample(x, axis), _to_model_axis(x, axis), rtol=1e-6, atol=1e-3)


def test_training_data_is_deterministic_and_labelled() -> None:
    pytest.importorskip("torch")
    from scanlens.models.eels import Recipe, build_dataset

    tiny = Recipe(n_scans=0, scan_keep=0.0, n_mixtures=600, epochs=1)
    x1, a1, _ = build_dataset(tiny, seed=3)
    x2, a2, _ = build_dataset(tiny, seed=3)
    x3, _, _ = build_dataset(tiny, seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (600, 240) and x1.dtype == np.float32
    assert np.all(a1 >= 0)
    np.testing.assert_allclose(a1.sum(axis=1), 1.0, atol=1e-6)
    pure = (a1.max(axis=1) == 1.0).mean()
    assert 0.1 < pure < 0.35, "pure, binary and ternary mixtures"


# --------------------------------------------------------------------------- CLI


def test_cli_help_explains_the_command() -> None:
    result = CliRunner().invoke(app, ["eels", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--out", "--quick", "--seed", "--replace-shipped", "--name", "user model", "eels-mlp", "STO",
                 "held-out"):
        assert text in result.output
    top = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert top.exit_code == 0 and "eels" in top.output


def test_cli_without_torch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scanlens.models.eels", None)  # import fails like a missing torch
    result = CliRunner().invoke(app, ["eels", "--quick"])
    assert result.exit_code == 1
    assert ".[train]" in result.output


def test_cli_runs_training_and_prints_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def fake_train(out: Path, *, quick: bool, seed: int, progress: Any) -> dict[str, float]:
        calls.append({"out": out, "quick": quick, "seed": seed})
        progress(TrainProgress("data", 1, 1, message="mixtures"))
        for epoch in (1, 2):
            progress(TrainProgress("train", epoch, 2, loss=1.0 / epoch))
        progress(TrainProgress("export", 1, 1, message="done"))
        return {"phase_accuracy": 0.998, "abundance_rmse": 0.012}

    monkeypatch.setitem(sys.modules, "scanlens.models.eels", types.SimpleNamespace(train=fake_train))
    result = CliRunner().invoke(app, ["eels", "--quick", "--seed", "5", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert calls == [{"out": tmp_path / "m.onnx", "quick": True, "seed": 5}]
    assert "epoch   2/2  loss 0.5000" in result.output
    assert "phase_accuracy" in result.output and "0.998" in result.output
    # the shipped file only on request (the default, the user model directory, may not take a shipped name:
    # tests/test_user_models.py)
    replace = CliRunner().invoke(app, ["eels", "--replace-shipped"])
    assert replace.exit_code == 0, replace.output
    assert calls[-1] == {"out": MODEL_DIR / "eels-mlp.onnx", "quick": False, "seed": 0}
