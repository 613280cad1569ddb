"""Samples the shipped models do not know (issue 12, live training on the user's own sample).

Two simulator options make them: ``EELSConfig.sample = "cto"``, a CaTiO3 / interface / NdGaO3
heterostructure whose three phases are none of STO, LSMO, BFO (or LAO), and
``BEPFMConfig.spores_per_100um2``, B. subtilis spores among the cocci and rods, a fourth class. Checked
here: the new data are deterministic, their ground truth names the classes and holds each with a fair
share of the pixels, the defaults are exactly what they were before the options existed (values
recorded from the simulators before the change), the CLI offers both options, the sources stream
through the service, and what the committed models make of them, run through the service's own
loader and axis mapping: eels-mlp and eels-fit flag >= 90 % of the CTO sample novel at the default dose
(measured: 99.98 % and 100 %, seed 0), while eels-mlp calls CTO "STO" and NGO "LSMO" with full
confidence; bepfm-mlp flags most spore pixels novel (measured: 92.4 %, seed 0, 8 spores per 100 um²)
and calls them background (73 %) or P. fluorescens (27 %), never M. lysodeikticus.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from scanlens.app.cli import app
from scanlens.app.config import Settings
from scanlens.app.server import running
from scanlens.client import Subscriber
from scanlens.model_files import MODEL_DIR
from scanlens.pipeline.axis import AxisMap
from scanlens.pipeline.loading import open_recognizer
from scanlens.sim.bepfm import (
    ALL_CLASSES,
    CLASSES,
    SPORE_CLASS,
    BEPFMConfig,
    BEPFMSample,
    BEPFMSource,
)
from scanlens.sim.bepfm import load_ground_truth as load_bepfm_truth
from scanlens.sim.eels import (
    ALL_PHASES,
    CTO_PHASES,
    DEFAULT_AXIS,
    PHASES,
    SAMPLE_PHASES,
    EELSConfig,
    EELSSample,
    EELSSource,
    axis_energies,
    expected_counts,
    load_ground_truth,
    reference_spectra,
    reference_spectrum,
    simulate_spectra,
)
from scanlens.testing import run_cli

runner = CliRunner()
SPORES = 8.0  # spores per 100 um² in the measured scans (about as many as cocci or rods: 9 and 8)


def _lines(sample: EELSSample | BEPFMSample) -> np.ndarray:
    return np.stack([sample.line(r) for r in range(sample.cfg.rows)])


def _recognize(name: str, sample: EELSSample | BEPFMSample) -> dict[str, np.ndarray]:
    """The committed model ``name`` on every pixel of ``sample``, mapped onto its axis as the service maps a
    scan (``AxisMap`` from the sample's axis; components in the order the sources send them, the card's)."""
    rec = open_recognizer(MODEL_DIR / f"{name}.onnx")
    x = _lines(sample)
    x = x.reshape(-1, *x.shape[2:])
    return rec.run(AxisMap.build(sample.cfg.axis, rec.card.input.axis).apply(x))


def _ratio(phase: str, e_low: float, e_high: float) -> float:
    """Intensity at ``e_high`` over intensity at ``e_low``: > 1 across an edge, < 1 on the bare background."""
    w = reference_spectrum(phase, np.array([e_low, e_high]))
    return float(w[1] / w[0])


@pytest.fixture(scope="module")
def cto() -> EELSSample:
    return EELSSample(EELSConfig(sample="cto"))


@pytest.fixture(scope="module")
def spores() -> BEPFMSample:
    return BEPFMSample(BEPFMConfig(spores_per_100um2=SPORES))


# --------------------------------------------------------------------------- the defaults are untouched


def test_the_default_eels_sample_is_what_it_was() -> None:
    """Recorded from ``EELSSample(EELSConfig())`` before ``sample`` existed: phase map and line 0."""
    s = EELSSample(EELSConfig())
    assert s.phases == PHASES and EELSConfig().sample == "oxide"
    assert np.bincount(s.phase.ravel()).tolist() == [4215, 4449, 7720]
    col0 = ("00000000000000000000000000000000000111111111111222222222222222222222222211111111222222222222222222"
            "111111111111112222222222222222")
    assert "".join(map(str, s.phase[:, 0])) == col0
    line0 = [[1.64, 267.13, 764.07, 407.35, 181.13, 118.85, 92.67, 53.77, 34.65, 31.13],
             [-0.81, 285.94, 776.14, 383.07, 182.91, 113.16, 80.38, 51.16, 39.31, 35.03],
             [-0.77, 257.84, 762.10, 402.73, 200.73, 123.03, 87.68, 59.73, 37.02, 32.39],
             [2.40, 268.28, 759.43, 415.16, 192.20, 129.05, 78.95, 50.54, 39.74, 33.38]]
    np.testing.assert_allclose(s.line(0)[::37, ::53], line0, atol=0.011)
    np.testing.assert_array_equal(EELSSample(EELSConfig(sample="oxide")).line(5), s.line(5))
    assert EELSSource().meta["phases"] == list(PHASES)


def test_the_default_bepfm_scan_is_what_it_was() -> None:
    """Recorded from ``BEPFMSample(BEPFMConfig())`` before spores existed: labels and line 50."""
    s = BEPFMSample(BEPFMConfig())
    assert s.classes == CLASSES and len(s.cells) == 28
    assert np.bincount(s.label.ravel()).tolist() == [14073, 1062, 1249]
    amp = [[4.259, 8.781, 16.439, 5.261, 1.973], [1.316, 2.135, 5.782, 4.017, 2.714],
           [0.705, 1.277, 2.749, 5.881, 1.536], [2.226, 5.641, 15.368, 3.365, 2.430],
           [3.380, 7.386, 34.739, 5.047, 3.513]]
    phase = [[-0.099, -0.549, -2.852, -3.570, -3.065], [0.491, 0.251, -0.058, -2.901, -4.050],
             [0.547, 0.082, 0.218, -2.391, -2.097], [0.135, -0.344, -2.694, -2.981, -3.408],
             [-0.020, -0.066, -2.332, -2.730, -2.933]]
    line = s.line(50)
    np.testing.assert_allclose(line[::29, ::31, 0], amp, atol=1.1e-3)
    np.testing.assert_allclose(line[::29, ::31, 1], phase, atol=1.1e-3)
    np.testing.assert_array_equal(BEPFMSample(BEPFMConfig(spores_per_100um2=0.0)).line(7), s.line(7))
    assert BEPFMSource().meta["classes"] == list(CLASSES) and CLASSES == ALL_CLASSES[:3]


def test_configs_written_before_the_options_read_back_with_the_defaults(tmp_path) -> None:
    for cls in (EELSConfig, BEPFMConfig):
        fields = json.loads(cls(seed=4).to_json())
        fields.pop("sample", None)
        fields.pop("spores_per_100um2", None)
        assert cls.from_json(json.dumps(fields)) == cls(seed=4)
    assert EELSConfig.from_json(EELSConfig(sample="cto").to_json()).sample == "cto"
    assert BEPFMConfig.from_json(BEPFMConfig(spores_per_100um2=3.5).to_json()).spores_per_100um2 == 3.5
    with pytest.raises(ValueError, match="sample"):
        EELSConfig(sample="nacl")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BEPFMConfig(spores_per_100um2=-1.0)
    # default ground truth files name the classes they always did
    EELSSample(EELSConfig(rows=8, cols=8)).save_ground_truth(tmp_path / "e.npz")
    BEPFMSample(BEPFMConfig(rows=8, cols=8)).save_ground_truth(tmp_path / "b.npz")
    assert load_ground_truth(tmp_path / "e.npz")["phase_names"] == PHASES
    assert load_bepfm_truth(tmp_path / "b.npz")["class_names"] == CLASSES


# --------------------------------------------------------------------------- the CTO heterostructure


def test_cto_phases_are_new_physical_and_distinct() -> None:
    assert SAMPLE_PHASES == {"oxide": PHASES, "cto": CTO_PHASES}
    assert not set(CTO_PHASES) & set(ALL_PHASES) and len(CTO_PHASES) == 3
    e_fine = np.arange(0.0, 128.0, 0.001)
    for phase in CTO_PHASES:
        w = reference_spectrum(phase, e_fine)
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        assert np.trapezoid(w, e_fine) == pytest.approx(1.0, abs=1e-4)
    e = axis_energies(DEFAULT_AXIS)
    window = (e > 5) & (e < 125)
    refs = reference_spectra(e, (*PHASES, *CTO_PHASES))[:, window]
    unit = refs / np.linalg.norm(refs, axis=1, keepdims=True)
    cos = unit @ unit.T
    new_vs_old, new_vs_new = cos[3:, :3], cos[3:, 3:][~np.eye(3, dtype=bool)]
    assert np.all(new_vs_old.max(axis=1) > 0.9), "as alike as oxides are: a recognizer must learn them"
    assert np.all(new_vs_old < 0.99) and np.all(new_vs_new < 0.99)
    # the interface is its own phase: no combination of its neighbours leaves less than 10 % of it
    a = reference_spectra(e, ("CTO", "NGO"))[:, window].T
    y = reference_spectra(e, ("interface",))[0, window]
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    assert np.linalg.norm(a @ coef - y) / np.linalg.norm(y) > 0.1
    # each phase's own edges (intensity above the edge over below it, as in test_eels_sim.py): the Ca M2,3
    # edge and 3p -> 3d resonance in CTO only; Ti M2,3 in CTO, not in NGO; Ga M2,3 and Nd N4,5 in NGO
    assert _ratio("CTO", 24.0, 30.6) > 1.5 * max(_ratio(p, 24.0, 30.6) for p in (*PHASES, "interface", "NGO"))
    assert _ratio("CTO", 36.0, 44.0) > _ratio("NGO", 36.0, 44.0) + 0.1
    for lo, hi in ((101.0, 106.0), (110.0, 121.0)):
        assert _ratio("NGO", lo, hi) > 1.4 * max(_ratio(p, lo, hi) for p in (*PHASES, "CTO", "interface"))


def test_cto_lines_are_deterministic() -> None:
    cfg = EELSConfig(sample="cto", rows=24, cols=40, seed=4, drift_eV=0.5)
    a, b = EELSSample(cfg), EELSSample(cfg)
    for row in (0, 11, 23):
        np.testing.assert_array_equal(a.line(row), b.line(row))
    np.testing.assert_array_equal(a.phase, b.phase)
    assert not np.array_equal(EELSSample(EELSConfig(sample="cto", rows=24, cols=40, seed=5)).line(11), a.line(11))
    assert not np.array_equal(EELSSample(EELSConfig(rows=24, cols=40, seed=4, drift_eV=0.5)).line(11), a.line(11))


def test_cto_ground_truth(cto: EELSSample, tmp_path) -> None:
    rows, cols = cto.cfg.rows, cto.cfg.cols
    assert cto.phases == CTO_PHASES
    assert cto.phase.shape == (rows, cols) and cto.phase.dtype == np.uint8
    assert cto.abundance.shape == (rows, cols, 3)
    np.testing.assert_allclose(cto.abundance.sum(-1) + cto.unknown, 1.0, atol=1e-5)
    share = np.bincount(cto.phase.ravel(), minlength=3) / cto.phase.size
    assert share[0] > 0.25 and 0.12 < share[1] < 0.3 and share[2] > 0.3, share  # measured 0.335, 0.186, 0.479
    assert cto.abundance[..., 1].max() > 0.9  # the interface layer is (nearly) pure in its core
    # NGO substrate at the bottom, NGO on top, each CTO film between interface layers
    runs = [int(p) for i, p in enumerate(cto.phase[:, 0]) if i == 0 or p != cto.phase[i - 1, 0]]
    assert runs == [2, 1, 0, 1, 2, 1, 0, 1, 2]
    # the expected line is the abundance-weighted sum of the phases' spectra
    ref = expected_counts(cto.abundance[40].astype(np.float64), cto.cfg.axis, cto.cfg.dose, phases=CTO_PHASES)
    np.testing.assert_allclose(cto.expected_line(40), ref, rtol=2e-4, atol=1e-3)
    cto.save_ground_truth(tmp_path / "cto.npz")
    truth = load_ground_truth(tmp_path / "cto.npz")
    assert truth["phase_names"] == CTO_PHASES and truth["config"] == cto.cfg
    np.testing.assert_array_equal(truth["phase"], cto.phase)
    assert EELSSource(cto.cfg).meta["phases"] == list(CTO_PHASES)
    # with the unknown region, LAO joins as the fourth, unknown phase, as in the oxide sample
    lao = EELSSample(EELSConfig(sample="cto", rows=64, cols=64, unknown_region=True, seed=3))
    assert lao.unknown.max() > 0.9 and lao.phases == CTO_PHASES
    np.testing.assert_allclose(lao.abundance.sum(-1) + lao.unknown, 1.0, atol=1e-5)
    rng = np.random.default_rng(0)
    pure = simulate_spectra(np.eye(3), DEFAULT_AXIS, dose=1e5, read_noise=3.0, rng=rng, phases=CTO_PHASES)
    assert pure.shape == (3, 512)


def test_shipped_eels_models_flag_the_cto_sample_novel(cto: EELSSample) -> None:
    gt = cto.phase.ravel()
    mlp = _recognize("eels-mlp", cto)
    assert mlp["novel"].mean() >= 0.9, mlp["novel"].mean()  # measured 0.9998
    for k in range(3):
        assert mlp["novel"][gt == k].mean() >= 0.9, CTO_PHASES[k]
    # while its classifier is sure of the wrong answer: CTO is "STO", NGO "LSMO"
    assert np.mean(mlp["class"][gt == 0] == 0) > 0.95 and np.mean(mlp["class"][gt == 2] == 1) > 0.9
    assert np.median(mlp["confidence"]) > 0.95
    fit = _recognize("eels-fit", cto)
    assert fit["novel"].mean() >= 0.9, fit["novel"].mean()  # measured 1.0
    # the training sample of the same seed stays unflagged: the flags are the phases', not the layout's
    assert _recognize("eels-mlp", EELSSample(EELSConfig()))["novel"].mean() <= 0.02


# --------------------------------------------------------------------------- BE-PFM spores


def test_spore_scans_are_deterministic() -> None:
    cfg = BEPFMConfig(rows=48, cols=48, spores_per_100um2=20.0, seed=6)
    a, b = BEPFMSample(cfg), BEPFMSample(cfg)
    for row in (0, 30):
        np.testing.assert_array_equal(a.line(row), b.line(row))
    np.testing.assert_array_equal(a.label, b.label)
    assert np.any(a.label == 3)


def test_spore_ground_truth(spores: BEPFMSample, tmp_path) -> None:
    assert ALL_CLASSES == (*CLASSES, SPORE_CLASS) and spores.classes == ALL_CLASSES
    assert spores.label.shape == (spores.cfg.rows, spores.cfg.cols) and spores.label.dtype == np.uint8
    share = np.bincount(spores.label.ravel(), minlength=4) / spores.label.size
    assert np.all(share[1:] > 0.04), share  # measured 0.069, 0.074, 0.061
    spore_cells = [c for c in spores.cells if c.klass == 3]
    assert all(0.55 <= c.width_um <= 0.8 and 1.6 <= c.length_um / c.width_um <= 2.4 for c in spore_cells)
    inside = (spores.label == 3) & (spores.coverage > 0.95)
    f0, q = spores.params["f0_kHz"][inside], spores.params["Q"][inside]
    amp, phi = spores.params["amplitude"][inside], spores.params["phase_rad"][inside]
    others = (spores.label > 0) & (spores.label < 3) & (spores.coverage > 0.95)
    assert np.median(f0) > np.percentile(spores.params["f0_kHz"][others], 95)  # stiffer than any bacterium
    assert 340 < f0.min() and f0.max() <= 378  # inside the band, and the model's 316-382.6 kHz
    assert np.median(q) > 110 and np.median(amp) < 0.2 and np.median(phi) < -0.4
    spores.save_ground_truth(tmp_path / "spores.npz")
    truth = load_bepfm_truth(tmp_path / "spores.npz")
    assert truth["class_names"] == ALL_CLASSES and truth["config"] == spores.cfg
    np.testing.assert_array_equal(truth["label"], spores.label)
    assert BEPFMSource(spores.cfg).meta["classes"] == list(ALL_CLASSES)


def test_what_the_shipped_bepfm_model_makes_of_spores(spores: BEPFMSample) -> None:
    out = _recognize("bepfm-mlp", spores)
    gt = spores.label.ravel()
    spore = gt == 3
    assert out["novel"][spore].mean() >= 0.85, out["novel"][spore].mean()  # measured 0.924
    known = (gt > 0) & (gt < 3)
    assert out["novel"][known].mean() <= 0.05  # the bacteria it knows stay unflagged (measured 0.0)
    called = np.bincount(out["class"][spore], minlength=3) / spore.sum()
    assert called[0] >= 0.6 and called[1] <= 0.05, called  # measured background 0.727, P. fluorescens 0.273


# --------------------------------------------------------------------------- CLI and streaming


def test_cli_offers_the_options() -> None:
    for argv, words in ((["sim", "eels"], ["--sample", "cto", "CaTiO3"]),
                        (["sim", "bepfm"], ["--spores-per-100um2", "B. subtilis spores"])):
        result = runner.invoke(app, [*argv, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.replace("│", " ").split())
        assert all(w in text for w in words), (argv, text)
    result = runner.invoke(app, ["sim", "eels", "--sample", "nacl", "--quiet"], terminal_width=200)
    assert result.exit_code == 2 and "is not one of oxide, cto" in " ".join(result.output.replace("│", " ").split())


async def test_the_cli_streams_them_to_the_service(tmp_path) -> None:
    """`scanlens sim eels --sample cto` and `scanlens sim bepfm --spores-per-100um2` through a running service:
    complete scans, ground truth files naming the new classes, and the shipped models flag them."""
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=MODEL_DIR, models=["eels-mlp", "bepfm-mlp"], inference_threads=1)
    runs = {"cto": ("eels", "eels-mlp", "--sample", "cto", "--rows", "16", "--cols", "32"),
            "spores": ("bepfm", "bepfm-mlp", "--spores-per-100um2", "40", "--rows", "32", "--cols", "32")}
    results = {}
    async with running(settings) as server:
        for scan_id, (command, model, *options) in runs.items():
            async with Subscriber(server.endpoints["publish"], scan_id=scan_id) as sub:
                await sub.wait_ready()
                sim = asyncio.create_task(run_cli(
                    "-m", "scanlens.sim.cli", command, "--ingest", server.endpoints["ingest"], "--publish",
                    server.endpoints["publish"], "--scan-id", scan_id, "--dwell-us", "0", "--seed", "2",
                    "--truth", str(tmp_path / f"{scan_id}.npz"), "--quiet", *options))
                results[scan_id] = (await sub.collect_scan(scan_id, timeout=60), model)
                assert json.loads(await sim)["state"] == "complete"
    (cto, model) = results["cto"]
    truth = load_ground_truth(tmp_path / "cto.npz")
    assert truth["phase_names"] == CTO_PHASES and truth["config"].sample == "cto"
    assert cto.maps[model]["novel"].mean() >= 0.9 and cto.summary.recognizers[model].novel_fraction >= 0.9
    (spores, model) = results["spores"]
    truth = load_bepfm_truth(tmp_path / "spores.npz")
    assert truth["class_names"] == ALL_CLASSES and truth["config"].spores_per_100um2 == 40.0
    spore, novel = truth["label"] == 3, spores.maps[model]["novel"]
    assert spore.any() and novel[spore].mean() >= 0.7 and novel[~spore].mean() < 0.2
