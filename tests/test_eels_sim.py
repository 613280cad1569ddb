"""Physics of the EELS simulator: reference spectra, sample geometry, detector noise, drift, ground truth files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanlens.sim.eels import (
    ALL_PHASES,
    DEFAULT_AXIS,
    PHASES,
    UNKNOWN_PEAK,
    UNKNOWN_PHASE,
    EELSConfig,
    EELSSample,
    axis_energies,
    expected_counts,
    load_ground_truth,
    reference_spectra,
    reference_spectrum,
    simulate_spectra,
)
from scanlens.protocol.messages import Axis

E_FINE = np.arange(3.0, 128.0, 0.01)


@pytest.fixture(scope="module")
def demo() -> EELSSample:
    return EELSSample(EELSConfig())


def _ratio(phase: str, e_low: float, e_high: float) -> float:
    """Intensity at ``e_high`` over intensity at ``e_low``: > 1 across an edge, < 1 on the bare background."""
    w = reference_spectrum(phase, np.array([e_low, e_high]))
    return float(w[1] / w[0])


# --------------------------------------------------------------------------- reference spectra


def test_defaults_match_the_published_api() -> None:
    assert PHASES == ("STO", "LSMO", "BFO")
    assert DEFAULT_AXIS == Axis(size=512, offset=0.0, scale=0.25, units="eV")
    cfg = EELSConfig()
    assert (cfg.rows, cfg.cols, cfg.axis, cfg.drift_eV, cfg.seed) == (128, 128, DEFAULT_AXIS, 0.0, 0)


def test_references_are_positive_finite_and_unit_integral() -> None:
    refs = reference_spectra(E_FINE)
    assert refs.shape == (3, E_FINE.size) and refs.dtype == np.float64
    assert np.all(np.isfinite(refs)) and np.all(refs > 0)
    e = np.arange(0.0, 128.0, 0.001)
    for phase in PHASES:
        assert np.trapezoid(reference_spectrum(phase, e), e) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(reference_spectra(E_FINE, ("BFO",))[0], reference_spectrum("BFO", E_FINE))
    with pytest.raises(ValueError):
        reference_spectrum("NaCl", E_FINE)


def test_references_are_distinct_but_overlapping() -> None:
    refs = reference_spectra(E_FINE)
    unit = refs / np.linalg.norm(refs, axis=1, keepdims=True)
    cos = unit @ unit.T
    off_diagonal = cos[~np.eye(3, dtype=bool)]
    assert np.all(off_diagonal > 0.8), "all oxides share plasmon shape and background"
    assert np.all(off_diagonal < 0.99), "but each phase is recognisable"
    # Relative differences of several per cent over many channels.
    for i in range(3):
        for j in range(i + 1, 3):
            rel = np.abs(refs[i] - refs[j]) / (0.5 * (refs[i] + refs[j]))
            assert np.mean(rel[(E_FINE > 5) & (E_FINE < 125)]) > 0.08


@pytest.mark.parametrize(("phase", "plasmon_eV"), [("STO", 28.5), ("LSMO", 23.0), ("BFO", 26.5)])
def test_plasmon_peaks_sit_at_phase_specific_energies(phase: str, plasmon_eV: float) -> None:
    window = (E_FINE > 15) & (E_FINE < 35)
    w = reference_spectrum(phase, E_FINE[window])
    assert E_FINE[window][np.argmax(w)] == pytest.approx(plasmon_eV, abs=0.5)
    # The low-loss region carries most of the intensity, the core-loss tail falls off like a power law.
    assert w.max() > 3 * reference_spectrum(phase, np.array([60.0]))[0]
    assert _ratio(phase, 70.0, 90.0) < 0.8


def test_core_loss_edges_where_specified() -> None:
    # Each edge raises the intensity of its own phase across the onset, the others keep falling.
    edges = {"LSMO": [(46.0, 51.0), (97.0, 101.8), (105.0, 114.0)], "BFO": [(52.5, 58.0)]}
    for owner, windows in edges.items():
        for lo, hi in windows:
            assert _ratio(owner, lo, hi) > 1.2, (owner, lo, hi)
            for other in PHASES:
                if other != owner:
                    assert _ratio(other, lo, hi) < 1.0, (other, lo, hi)
    # Ti M2,3 (onset 35 eV, delayed maximum): a shoulder that flattens STO's decay after the plasmon.
    ti = _ratio("STO", 36.0, 44.0)
    assert ti > _ratio("LSMO", 36.0, 44.0) + 0.1 and ti > _ratio("BFO", 36.0, 44.0) + 0.1
    # No zero-loss peak: nothing to speak of below 3 eV.
    assert np.all(reference_spectra(np.array([0.5, 1.0])) < 0.1 * reference_spectra(np.array([25.0])).min())


def test_shift_moves_the_analytic_spectrum() -> None:
    w = reference_spectrum("STO", E_FINE)
    shifted = expected_counts(np.array([[1.0, 0, 0]]), Axis(size=E_FINE.size, offset=3.0, scale=0.01, units="eV"), 1.0, 0.5)
    window = (E_FINE > 15) & (E_FINE < 35)
    peak = E_FINE[window][np.argmax(w[window])]
    peak_shifted = E_FINE[window][np.argmax(shifted[0][window])]
    assert peak_shifted - peak == pytest.approx(0.5, abs=0.011)


# --------------------------------------------------------------------------- sample geometry


def test_abundance_is_a_valid_mixture_and_phase_is_its_argmax(demo: EELSSample) -> None:
    a, phase = demo.abundance, demo.phase
    assert a.shape == (128, 128, 3) and a.dtype == np.float32
    assert phase.shape == (128, 128) and phase.dtype == np.uint8
    assert np.all(a >= 0)
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(phase, np.argmax(a, axis=-1))
    assert set(np.unique(phase)) == {0, 1, 2}
    assert np.all(phase[:10] == 0), "STO substrate first"
    # Layers: the phase sequence down a column alternates LSMO / BFO above the substrate.
    column = phase[:, 64]
    runs = column[np.r_[True, column[1:] != column[:-1]]]
    assert runs[0] == 0 and all(r in (1, 2) for r in runs[1:]) and len(runs) >= 5
    assert all(runs[k] != runs[k + 1] for k in range(len(runs) - 1))


def test_interfaces_are_intermixed_over_a_few_pixels(demo: EELSSample) -> None:
    cfg = demo.cfg
    sto = demo.abundance[..., 0].astype(np.float64)
    widths = []
    for col in range(cfg.cols):
        profile = sto[:, col]  # STO substrate -> LSMO: STO fraction falls monotonically
        assert np.all(np.diff(profile) <= 1e-6)
        assert profile[0] > 0.999 and profile[-1] < 0.001
        r90, r10 = np.interp([0.9, 0.1], profile[::-1], np.arange(cfg.rows)[::-1])
        widths.append(r10 - r90)
    # erf profile: 10-90 % width = 2 * 0.906 * w.
    assert np.mean(widths) == pytest.approx(1.8124 * cfg.interface_width_px, rel=0.05)
    mixed = demo.abundance.max(axis=-1) < 0.9
    assert 0.03 < mixed.mean() < 0.25, "interfaces are intermixed, yet most pixels are nearly pure"
    near_half = demo.abundance.max(axis=-1) < 0.55
    assert near_half.mean() < 0.03


def test_interfaces_are_laterally_rough(demo: EELSSample) -> None:
    y = demo.interfaces_px
    assert y.shape[1] == demo.cfg.cols
    rms = y.std(axis=1)
    assert np.all(rms > 0.3 * demo.cfg.roughness_px) and np.all(rms < 2.5 * demo.cfg.roughness_px)
    assert np.all(np.abs(np.diff(y, axis=1)) < 1.0), "roughness is smooth along columns"
    flat = EELSSample(EELSConfig(roughness_px=0.0))
    assert np.allclose(flat.interfaces_px.std(axis=1), 0.0)
    other = EELSSample(EELSConfig(seed=5))
    assert not np.allclose(other.abundance, demo.abundance)


# --------------------------------------------------------------------------- scan lines and noise


def test_line_shape_dtype_and_determinism(demo: EELSSample) -> None:
    first = demo.line(17)
    assert first.shape == (128, 512) and first.dtype == np.float32
    assert np.all(np.isfinite(first))
    demo.line(90)  # any order
    np.testing.assert_array_equal(first, demo.line(17))
    np.testing.assert_array_equal(first, EELSSample(EELSConfig()).line(17))
    assert not np.array_equal(first, demo.line(18))
    assert not np.array_equal(first, EELSSample(EELSConfig(seed=1)).line(17))
    with pytest.raises(IndexError):
        demo.line(128)


def test_expected_counts_are_dose_times_linear_mixture(demo: EELSSample) -> None:
    cfg = demo.cfg
    row = 37
    refs = reference_spectra(axis_energies(cfg.axis))
    mix = demo.abundance[row].astype(np.float64) @ refs * cfg.dose * cfg.axis.scale
    np.testing.assert_allclose(demo.expected_line(row), mix, rtol=1e-4, atol=1e-3)
    # dose = total expected counts of a spectrum over the axis (0-127.75 eV).
    np.testing.assert_allclose(demo.expected_line(row).sum(axis=1), cfg.dose, rtol=0.01)


@pytest.mark.parametrize("dose", [1.0e5, 2.0e3])
def test_noise_is_poisson_plus_read_noise(dose: float) -> None:
    cfg = EELSConfig(dose=dose, read_noise=3.0)
    sample = EELSSample(cfg)
    rows = range(0, 128, 2)
    lam = np.stack([sample.expected_line(r) for r in rows]).astype(np.float64)
    counts = np.stack([sample.line(r) for r in rows]).astype(np.float64)
    z = (counts - lam) / np.sqrt(lam + cfg.read_noise**2)
    checked = 0
    for band in [(lam < 10), (lam >= 10) & (lam < 40), (lam >= 40)]:
        if band.sum() < 10_000:
            continue
        checked += 1
        assert abs(z[band].mean()) < 0.03
        assert z[band].var() == pytest.approx(1.0, abs=0.04)
    assert checked >= 1
    # Mean and variance per channel over the pure STO substrate (same expected spectrum in every pixel).
    pure = np.stack([sample.line(r) for r in range(2, 14)]).reshape(-1, 512).astype(np.float64)
    lam_pure = sample.expected_line(5)[0].astype(np.float64)
    e = axis_energies(cfg.axis)
    sel = (e > 5) & (e < 125)
    n = pure.shape[0]
    mean_err = (pure.mean(axis=0) - lam_pure)[sel] / np.sqrt((lam_pure[sel] + 9.0) / n)
    assert np.abs(mean_err).max() < 5.0
    ratio = pure.var(axis=0)[sel] / (lam_pure[sel] + 9.0)
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)
    assert np.all(np.abs(ratio - 1) < 6 * np.sqrt(2 / n))


def test_low_counts_are_integer_poisson_without_read_noise() -> None:
    rng = np.random.default_rng(3)
    axis = Axis(size=64, offset=10.0, scale=0.25, units="eV")
    a = np.tile([[0.0, 1.0, 0.0]], (4000, 1))
    counts = simulate_spectra(a, axis, dose=300.0, read_noise=0.0, rng=rng)
    lam = expected_counts(a[:1], axis, 300.0)[0]
    assert lam.max() < 40
    np.testing.assert_array_equal(counts, np.round(counts))
    assert np.all(counts >= 0)
    np.testing.assert_allclose(counts.mean(axis=0), lam, atol=5 * np.sqrt(lam.max() / 4000))
    np.testing.assert_allclose(counts.var(axis=0), lam, rtol=0.15)


def test_simulate_spectra_matches_scan_physics() -> None:
    rng = np.random.default_rng(0)
    a = np.array([[0.2, 0.5, 0.3]] * 2000)
    dose = np.full(2000, 5.0e4)
    shift = np.repeat([0.0, 0.2], 1000)
    x = simulate_spectra(a, DEFAULT_AXIS, dose=dose, read_noise=np.full(2000, 2.0), rng=rng, shift_eV=shift)
    assert x.shape == (2000, 512) and x.dtype == np.float32
    e = axis_energies(DEFAULT_AXIS)
    for half, s in ((slice(0, 1000), 0.0), (slice(1000, 2000), 0.2)):
        lam = a[0] @ reference_spectra(e - s) * 5.0e4 * DEFAULT_AXIS.scale
        err = (x[half].mean(axis=0) - lam) / np.sqrt((lam + 4.0) / 1000)
        assert np.abs(err[20:]).max() < 5.0


# --------------------------------------------------------------------------- drift


def _fit_shift(spectrum: np.ndarray, phase_index: int, sample: EELSSample) -> float:
    """Energy shift that best explains a pure-phase spectrum (grid search, 0.005 eV)."""
    e = sample.energy
    sel = (e > 10) & (e < 60)
    best, best_chi = 0.0, np.inf
    for s in np.arange(-1.0, 1.0, 0.005):
        model = reference_spectra(e[sel] - s)[phase_index] * sample.cfg.dose * sample.cfg.axis.scale
        chi = np.sum((spectrum[sel] - model) ** 2 / (model + 9.0))
        if chi < best_chi:
            best, best_chi = s, chi
    return float(best)


def test_drift_shifts_peaks_by_the_expected_amount() -> None:
    assert np.all(EELSSample(EELSConfig()).shift_eV == 0.0)
    cfg = EELSConfig(drift_eV=1.2, dose=4.0e5, rows=64, cols=64)
    sample = EELSSample(cfg)
    shift = sample.shift_eV
    assert shift.shape == (64,)
    assert shift.max() - shift.min() == pytest.approx(1.2, abs=1e-9)
    assert np.abs(np.diff(shift)).max() < 4 / 64 * 1.2, "the drift is slow"
    # The STO substrate (rows 0..9) is pure: fit each row's shift from the noisy counts.
    for row in range(0, 10, 3):
        measured = _fit_shift(sample.line(row).mean(axis=0), 0, sample)
        assert measured == pytest.approx(shift[row], abs=0.02)
    # Between the rows of least and most drift the spectra of pure pixels move by the full drift.
    lo, hi = int(np.argmin(shift)), int(np.argmax(shift))
    measured = []
    for row in (lo, hi):
        pure = sample.abundance[row].max(axis=1) > 0.999
        phase = int(np.bincount(sample.phase[row][pure]).argmax())
        cols = pure & (sample.phase[row] == phase)
        assert cols.sum() >= 8
        measured.append(_fit_shift(sample.line(row)[cols].mean(axis=0), phase, sample))
    assert measured[1] - measured[0] == pytest.approx(1.2, abs=0.03)
    ref = sample.abundance[hi].astype(np.float64) @ reference_spectra(sample.energy - shift[hi])
    np.testing.assert_allclose(sample.expected_line(hi), ref * cfg.dose * cfg.axis.scale, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- ground truth files


def test_ground_truth_round_trip(tmp_path, demo: EELSSample) -> None:  # type: ignore[no-untyped-def]
    cfg = EELSConfig(rows=32, cols=48, drift_eV=0.4, seed=12, axis=Axis(size=1024, offset=0.0, scale=0.125, units="eV"))
    sample = EELSSample(cfg)
    path = tmp_path / "truth.npz"
    sample.save_ground_truth(path)
    truth = load_ground_truth(path)
    np.testing.assert_array_equal(truth["phase"], sample.phase)
    np.testing.assert_array_equal(truth["abundance"], sample.abundance)
    np.testing.assert_array_equal(truth["shift_eV"], sample.shift_eV)
    assert truth["phase"].dtype == np.uint8 and truth["abundance"].dtype == np.float32
    assert truth["phase_names"] == PHASES
    assert truth["axis"] == cfg.axis
    assert truth["config"] == cfg
    # The file is plain numpy (no pickle) and a sample rebuilt from its config is identical.
    with np.load(path, allow_pickle=False) as raw:
        assert set(raw.files) >= {"phase", "abundance", "phase_names", "axis", "config"}
    np.testing.assert_array_equal(EELSSample(truth["config"]).line(3), sample.line(3))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        EELSConfig(dose=0.0)
    with pytest.raises(ValueError):
        EELSConfig(interface_width_px=0.0)
    with pytest.raises(ValueError):
        EELSConfig(rows=0)


# --------------------------------------------------------------------------- unknown phase region


def test_unknown_region_is_off_by_default_and_changes_nothing(demo: EELSSample) -> None:
    assert EELSConfig().unknown_region is False
    assert demo.unknown.shape == (128, 128) and demo.unknown.dtype == np.float32
    assert not demo.unknown.any()
    # Numbers pinned from the simulator before the unknown region existed (the committed eels-mlp demo).
    a = demo.abundance.astype(np.float64)
    assert a[..., 1].sum() == pytest.approx(4448.293497985756, rel=1e-6)
    assert a[..., 2].sum() == pytest.approx(7721.904465316367, rel=1e-6)
    assert np.bincount(demo.phase.ravel()).tolist() == [4215, 4449, 7720]
    assert demo.interfaces_px.sum() == pytest.approx(55548.69553235582, rel=1e-9)
    assert demo.line(17).astype(np.float64).sum() == pytest.approx(12805342.256598808, rel=1e-6)
    assert float(demo.line(100)[5, 100]) == pytest.approx(729.8153076171875, rel=1e-5)


def test_unknown_phase_spectrum_is_outside_the_reference_set() -> None:
    assert UNKNOWN_PHASE == "LAO" and UNKNOWN_PHASE not in PHASES and ALL_PHASES == (*PHASES, UNKNOWN_PHASE)
    e = np.arange(0.0, 128.0, 0.001)
    assert np.trapezoid(reference_spectrum(UNKNOWN_PHASE, e), e) == pytest.approx(1.0, abs=1e-4)
    lao = reference_spectrum(UNKNOWN_PHASE, E_FINE)
    assert np.all(np.isfinite(lao)) and np.all(lao > 0)
    window = (E_FINE > 15) & (E_FINE < 35)
    assert E_FINE[window][np.argmax(lao[window])] == pytest.approx(27.0, abs=0.5), "plasmon"
    # Al L2,3 raises LAO across 76.5 eV while every known phase keeps falling; no Mn / Fe M2,3 edge.
    assert _ratio(UNKNOWN_PHASE, 75.0, 80.0) > 1.3
    assert all(_ratio(p, 75.0, 80.0) < 1.0 for p in PHASES)
    assert _ratio(UNKNOWN_PHASE, 46.0, 51.0) < 1.0 and _ratio(UNKNOWN_PHASE, 52.5, 58.0) < 1.0
    # Not a mixture of the references: the best least-squares mixture misses it by several per cent.
    sel = (E_FINE > 5) & (E_FINE < 125)
    refs = reference_spectra(E_FINE[sel])
    coef = np.linalg.lstsq(refs.T, lao[sel], rcond=None)[0]
    assert np.sqrt(np.mean((coef @ refs - lao[sel]) ** 2)) / lao[sel].mean() > 0.03
    # expected_counts takes a fourth abundance column for it.
    axis = Axis(size=100, offset=20.0, scale=1.0, units="eV")
    a4 = np.array([[0.0, 0.0, 0.0, 1.0], [0.2, 0.3, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])
    got = expected_counts(a4, axis, 1000.0)
    e_ax = axis_energies(axis)
    np.testing.assert_allclose(got[0], reference_spectrum(UNKNOWN_PHASE, e_ax) * 1000.0)
    np.testing.assert_allclose(got[1], expected_counts(a4[1:2, :3], axis, 1000.0)[0])
    np.testing.assert_allclose(got[2], a4[2] @ reference_spectra(e_ax, ALL_PHASES) * 1000.0)
    with pytest.raises(ValueError):
        expected_counts(np.ones((2, 5)), axis, 1000.0)


@pytest.mark.parametrize("seed", [0, 1, 999])
def test_unknown_region_geometry_and_normalisation(seed: int) -> None:
    off = EELSSample(EELSConfig(seed=seed))
    on = EELSSample(EELSConfig(seed=seed, unknown_region=True))
    u = on.unknown
    assert u.shape == (128, 128) and u.dtype == np.float32
    assert np.all(u >= 0) and np.all(u <= 1) and u.max() == pytest.approx(UNKNOWN_PEAK, abs=1e-6)
    core = u > 0.5
    assert 0.05 <= core.mean() <= 0.15, "covers 5-15 % of the scan"
    edge = (u > 0.05) & (u < 0.9)
    assert 0 < edge.sum() < core.sum(), "blends into the host over a thin rim"
    rows = np.flatnonzero(core.any(axis=1))
    assert len(np.unique(on.phase[core])) >= 2 and rows.max() - rows.min() > 25, "crosses layers"
    # The 4-phase mixture is (1 - u) * host layers + u * LAO: known abundances and u sum to 1.
    assert np.all(on.abundance >= 0)
    np.testing.assert_allclose(on.abundance.sum(axis=-1) + u, 1.0, atol=1e-6)
    np.testing.assert_array_equal(on.phase, np.argmax(on.abundance, axis=-1))
    host = on.abundance.astype(np.float64) / on.abundance.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(host, off.abundance, atol=1e-5)
    np.testing.assert_array_equal(on.phase, off.phase)
    np.testing.assert_array_equal(on.interfaces_px, off.interfaces_px)
    # Deterministic per seed, and the region moves with the seed.
    np.testing.assert_array_equal(EELSSample(EELSConfig(seed=seed, unknown_region=True)).unknown, u)
    other = EELSSample(EELSConfig(seed=seed + 2, unknown_region=True)).unknown
    assert not np.array_equal(other, u)


def test_unknown_region_spectra_mix_in_the_unknown_phase() -> None:
    cfg = EELSConfig(unknown_region=True, drift_eV=0.5, rows=64, cols=64, seed=4)
    sample = EELSSample(cfg)
    row = int(np.argmax(sample.unknown.max(axis=1)))
    assert sample.unknown[row].max() > 0.9
    e = axis_energies(cfg.axis) - sample.shift_eV[row]
    a4 = np.concatenate([sample.abundance[row], sample.unknown[row][:, None]], axis=1).astype(np.float64)
    expected = a4 @ reference_spectra(e, ALL_PHASES) * cfg.dose * cfg.axis.scale
    np.testing.assert_allclose(sample.expected_line(row), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(sample.expected_line(row).sum(axis=1), cfg.dose, rtol=0.01)
    line = sample.line(row)
    assert line.shape == (64, 512) and line.dtype == np.float32 and np.all(np.isfinite(line))
    tiny = EELSSample(EELSConfig(rows=1, cols=1, unknown_region=True))
    assert tiny.line(0).shape == (1, 512)


def test_unknown_region_ground_truth_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = EELSConfig(rows=40, cols=56, seed=8, unknown_region=True)
    sample = EELSSample(cfg)
    path = tmp_path / "truth.npz"
    sample.save_ground_truth(path)
    truth = load_ground_truth(path)
    np.testing.assert_array_equal(truth["unknown"], sample.unknown)
    assert truth["unknown"].dtype == np.float32 and truth["unknown"].any()
    np.testing.assert_array_equal(truth["abundance"], sample.abundance)
    assert truth["unknown_phase"] == UNKNOWN_PHASE
    assert truth["config"] == cfg and truth["config"].unknown_region is True
    np.testing.assert_array_equal(EELSSample(truth["config"]).line(20), sample.line(20))
    # A file written before the unknown region existed: no "unknown" array, no key in the config.
    with np.load(path, allow_pickle=False) as raw:
        old = {k: raw[k] for k in raw.files if k not in ("unknown", "unknown_phase")}
    fields = json.loads(str(old["config"]))
    del fields["unknown_region"]
    old["config"] = np.array(json.dumps(fields))
    np.savez_compressed(tmp_path / "old.npz", **old)
    legacy = load_ground_truth(tmp_path / "old.npz")
    assert legacy["unknown"].shape == (40, 56) and not legacy["unknown"].any()
    assert legacy["config"] == EELSConfig(rows=40, cols=56, seed=8)
