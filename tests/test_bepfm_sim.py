"""Physics of the BE-PFM bacteria simulator: SHO resonance, class distributions, cell shapes, noise, ground truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scanlens.sim.bepfm import (
    CLASSES,
    COMPONENTS,
    DEFAULT_AXIS,
    PARAM_NAMES,
    BEPFMConfig,
    BEPFMSample,
    BEPFMSource,
    axis_frequencies,
    load_ground_truth,
    segment_distance,
    sho_amplitude_phase,
)
from scanlens.protocol.messages import Axis

FINE_AXIS = Axis(size=4000, offset=310.0, scale=0.02, units="kHz")


@pytest.fixture(scope="module")
def demo() -> BEPFMSample:
    return BEPFMSample(BEPFMConfig())


@pytest.fixture(scope="module")
def quiet() -> BEPFMSample:
    """A small noise-free scan on the default band."""
    return BEPFMSample(BEPFMConfig(rows=24, cols=48, noise=0.0, seed=3))


def _theta(sample: BEPFMSample) -> np.ndarray:
    """Parameter maps as ``[rows, cols, 4]`` in (f0 kHz, ln Q, ln A0, phi0)."""
    p = sample.params
    return np.stack([p["f0_kHz"], np.log(p["Q"]), np.log(p["amplitude"]), p["phase_rad"]], axis=-1).astype(np.float64)


def _interior(sample: BEPFMSample) -> np.ndarray:
    """Pixels well inside a cell or well away from every cell (no rim blending)."""
    return (sample.coverage > 0.98) | (sample.coverage < 0.02)


# --------------------------------------------------------------------------- API and scan lines


def test_defaults_match_the_published_api() -> None:
    assert CLASSES == ("background", "M. lysodeikticus", "P. fluorescens")
    assert COMPONENTS == ("amplitude", "phase")
    assert PARAM_NAMES == ("amplitude", "f0_kHz", "Q", "phase_rad")
    assert DEFAULT_AXIS.units == "kHz" and 64 <= DEFAULT_AXIS.size <= 128
    assert DEFAULT_AXIS.offset < 330.0 and DEFAULT_AXIS.end > 370.0, "the band brackets the ~350 kHz resonance"
    cfg = BEPFMConfig()
    assert (cfg.rows, cfg.cols, cfg.axis, cfg.seed) == (128, 128, DEFAULT_AXIS, 0)
    assert cfg.pixel_size_um > 0 and cfg.noise > 0


def test_line_shape_dtype_and_determinism(demo: BEPFMSample) -> None:
    first = demo.line(17)
    assert first.shape == (128, DEFAULT_AXIS.size, 2) and first.dtype == np.float32
    assert np.all(np.isfinite(first)) and np.all(first[..., 0] >= 0)
    demo.line(90)  # any order
    np.testing.assert_array_equal(first, demo.line(17))
    np.testing.assert_array_equal(first, BEPFMSample(BEPFMConfig()).line(17))
    assert not np.array_equal(first, demo.line(18))
    other = BEPFMSample(BEPFMConfig(seed=1))
    assert not np.array_equal(first, other.line(17))
    assert not np.array_equal(demo.label, other.label)
    with pytest.raises(IndexError):
        demo.line(128)
    with pytest.raises(IndexError):
        demo.line(-1)


def test_maps_are_consistent(demo: BEPFMSample) -> None:
    assert demo.label.shape == (128, 128) and demo.label.dtype == np.uint8
    assert set(np.unique(demo.label)) == {0, 1, 2}
    assert set(demo.params) == set(PARAM_NAMES)
    for name, value in demo.params.items():
        assert value.shape == (128, 128) and value.dtype == np.float32, name
        assert np.all(np.isfinite(value)), name
    assert np.all(demo.params["amplitude"] > 0) and np.all(demo.params["Q"] >= 20)
    f0 = demo.params["f0_kHz"]
    assert np.all(f0 >= 322) and np.all(f0 <= 378)
    # The label is the class of the cell whose coverage is at least one half, else background.
    klass = np.array([0] + [c.klass for c in demo.cells], dtype=np.uint8)
    np.testing.assert_array_equal(demo.label, klass[demo.cell_id + 1])
    np.testing.assert_array_equal(demo.label > 0, demo.coverage >= 0.5)
    cell_share = (demo.label > 0).mean()
    assert 0.08 < cell_share < 0.35, "a sparse field of bacteria on the substrate"


def test_source_plays_the_sample() -> None:
    cfg = BEPFMConfig(rows=16, cols=40, seed=7)
    source = BEPFMSource(cfg)
    assert source.modality == "bepfm"
    assert source.shape == (16, 40) and source.axis == cfg.axis
    assert source.components == ["amplitude", "phase"]
    assert source.meta["classes"] == list(CLASSES) and source.meta["seed"] == 7
    np.testing.assert_array_equal(source.line(3), BEPFMSample(cfg).line(3))
    assert BEPFMSource().shape == (128, 128)


# --------------------------------------------------------------------------- the oscillator


def test_noise_free_line_is_the_sho(quiet: BEPFMSample) -> None:
    f = axis_frequencies(quiet.cfg.axis)
    for row in (0, 11, 23):
        p = {k: v[row] for k, v in quiet.params.items()}
        amp, phase = sho_amplitude_phase(f, p["amplitude"], p["f0_kHz"], p["Q"], p["phase_rad"])
        line = quiet.line(row)
        np.testing.assert_allclose(line[..., 0], amp, rtol=1e-5)
        np.testing.assert_allclose(line[..., 1], phase, atol=1e-5)
        np.testing.assert_allclose(np.abs(quiet.expected_line(row)), amp, rtol=1e-6)


def test_resonance_peak_sits_at_f0_and_phase_crosses_phi0_minus_half_pi(quiet: BEPFMSample) -> None:
    f = axis_frequencies(quiet.cfg.axis)
    step = quiet.cfg.axis.scale
    checked = 0
    for row in range(0, quiet.cfg.rows, 3):
        line = quiet.line(row).astype(np.float64)
        f0 = quiet.params["f0_kHz"][row].astype(np.float64)
        phi0 = quiet.params["phase_rad"][row].astype(np.float64)
        for col in range(quiet.cfg.cols):
            amp, phase = line[col, :, 0], line[col, :, 1]
            assert abs(f[np.argmax(amp)] - f0[col]) <= step  # the channel nearest the top, or its neighbour
            # The phase falls monotonically from ~phi0 to ~phi0 - pi: continuous, no wrapping in the band.
            assert np.all(np.diff(phase) < 0)
            assert phi0[col] - math.pi < phase[-1] < phase[0] < phi0[col]
            crossing = np.interp(-(phi0[col] - math.pi / 2), -phase, f)
            assert crossing == pytest.approx(f0[col], abs=step / 2)
            checked += 1
    assert checked > 300


def test_q_sets_the_width() -> None:
    cfg = BEPFMConfig(rows=40, cols=64, noise=0.0, seed=2, axis=FINE_AXIS)
    sample = BEPFMSample(cfg)
    f = axis_frequencies(FINE_AXIS)
    widths, expected = [], []
    for row in range(0, cfg.rows, 6):
        amp = sample.line(row)[..., 0].astype(np.float64)
        for col in range(0, cfg.cols, 5):
            a = amp[col]
            k = int(np.argmax(a))
            f0, q = float(sample.params["f0_kHz"][row, col]), float(sample.params["Q"][row, col])
            assert f[k] == pytest.approx(f0 * math.sqrt(1 - 0.5 / q**2), abs=0.021)
            assert f[k] == pytest.approx(f0, abs=0.25)
            half = a[k] / math.sqrt(2.0)  # half power
            lo = np.interp(half, a[: k + 1], f[: k + 1])
            hi = np.interp(-half, -a[k:], f[k:])
            widths.append(hi - lo)
            expected.append(sample.params["f0_kHz"][row, col] / sample.params["Q"][row, col])
            # The peak height is A0 * Q.
            assert a[k] == pytest.approx(sample.params["amplitude"][row, col] * sample.params["Q"][row, col], rel=1e-3)
    np.testing.assert_allclose(widths, expected, rtol=0.01)
    assert np.ptp(expected) > 1.0, "Q differs from pixel to pixel"


def test_noise_is_complex_gaussian_of_the_configured_rms() -> None:
    cfg = BEPFMConfig(rows=24, cols=64, seed=4, noise=1.5)
    sample = BEPFMSample(cfg)
    n = np.concatenate(
        [
            (lambda m: m[..., 0] * np.exp(1j * m[..., 1].astype(np.float64)))(sample.line(r)) - sample.expected_line(r)
            for r in range(cfg.rows)
        ]
    ).ravel()
    assert abs(n.real.mean()) < 0.02 and abs(n.imag.mean()) < 0.02
    assert n.real.std() == pytest.approx(cfg.noise / math.sqrt(2), rel=0.02)
    assert n.imag.std() == pytest.approx(cfg.noise / math.sqrt(2), rel=0.02)
    assert abs(np.corrcoef(n.real, n.imag)[0, 1]) < 0.02
    assert np.sqrt(np.mean(np.abs(n) ** 2)) == pytest.approx(cfg.noise, rel=0.02)
    # The reported phase follows the oscillator's continuous phase: within pi of it everywhere.
    f = axis_frequencies(cfg.axis)
    p = {k: v[5] for k, v in sample.params.items()}
    _, model_phase = sho_amplitude_phase(f, p["amplitude"], p["f0_kHz"], p["Q"], p["phase_rad"])
    assert np.all(np.abs(sample.line(5)[..., 1] - model_phase) <= math.pi + 1e-5)


def test_noise_scales_and_resonance_stays_visible(demo: BEPFMSample) -> None:
    # The resonance peak stands well above the noise floor in every pixel of the demo scan.
    line = demo.line(40)
    peak = line[..., 0].max(axis=1)
    floor = np.median(line[..., 0], axis=1)
    assert np.all(peak > 4 * demo.cfg.noise) and np.all(peak > 2 * floor)
    quiet = BEPFMSample(BEPFMConfig(noise=0.0))
    np.testing.assert_array_equal(quiet.label, demo.label)
    amp0 = quiet.line(40)[..., 0]
    np.testing.assert_allclose(amp0, np.abs(demo.expected_line(40)), rtol=1e-5)


# --------------------------------------------------------------------------- class distributions


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Balanced accuracy of the best single threshold (either direction) separating ``a`` from ``b``."""
    values = np.concatenate([a, b])
    is_b = np.r_[np.zeros(a.size, bool), np.ones(b.size, bool)]
    weight = np.where(is_b, 0.5 / b.size, 0.5 / a.size)
    order = np.argsort(values)
    # Predict "b" above the threshold: correct = a's below + b's above.
    below_a = np.cumsum(np.where(is_b[order], 0.0, weight[order]))
    below_b = np.cumsum(np.where(is_b[order], weight[order], 0.0))
    acc = below_a + (0.5 - below_b)
    return float(max(acc.max(), (1.0 - acc).max()))


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray, list[BEPFMSample]]:
    """Interior pixels' parameters and labels from a few scans."""
    samples = [BEPFMSample(BEPFMConfig(seed=s)) for s in (11, 12, 13, 14)]
    theta = np.concatenate([_theta(s)[_interior(s)] for s in samples])
    label = np.concatenate([s.label[_interior(s)] for s in samples])
    return theta, label, samples


def test_no_single_parameter_separates_the_classes(pool: tuple[np.ndarray, np.ndarray, list[BEPFMSample]]) -> None:
    theta, label, _ = pool
    worst = 0.0
    for i, j in ((0, 1), (0, 2), (1, 2)):
        for k in range(4):
            acc = _best_threshold_accuracy(theta[label == i, k], theta[label == j, k])
            worst = max(worst, acc)
            assert acc < 0.87, (CLASSES[i], CLASSES[j], k, acc)
    assert worst > 0.6, "but the parameters do carry class information"


def test_combinations_of_parameters_separate_the_classes(
    pool: tuple[np.ndarray, np.ndarray, list[BEPFMSample]],
) -> None:
    """A Gaussian (quadratic discriminant) classifier on all four parameters is near perfect."""
    theta, label, samples = pool
    fit_sel = np.arange(theta.shape[0]) % 2 == 0
    scores = []
    for c in range(3):
        x = theta[fit_sel & (label == c)]
        mean, cov = x.mean(axis=0), np.cov(x.T)
        d = theta - mean
        maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        scores.append(-0.5 * maha - 0.5 * np.linalg.slogdet(cov)[1])
    pred = np.argmax(scores, axis=0)
    assert np.mean(pred[~fit_sel] == label[~fit_sel]) > 0.995


def test_cells_vary_from_cell_to_cell_more_than_within(demo: BEPFMSample) -> None:
    theta = _theta(demo)
    inside = demo.coverage > 0.98
    means, within = [], []
    for i, cell in enumerate(demo.cells):
        sel = inside & (demo.cell_id == i)
        if sel.sum() < 10 or cell.klass != 1:
            continue
        means.append(theta[sel].mean(axis=0))
        within.append(theta[sel].std(axis=0))
    assert len(means) >= 8
    between = np.std(means, axis=0)
    assert np.all(between > 3 * np.mean(within, axis=0))


def test_rims_blend_the_cell_toward_the_substrate() -> None:
    cfg = BEPFMConfig(rows=96, cols=96, noise=0.0, edge_um=0.15, seed=8)
    sample = BEPFMSample(cfg)
    theta = _theta(sample)
    scale = theta[sample.coverage < 0.02].std(axis=0)
    rows, cols = np.indices(sample.label.shape)
    ts, ws = [], []
    for i, cell in enumerate(sample.cells):
        near = np.hypot((cols + 0.5) * cfg.pixel_size_um - cell.x_um, (rows + 0.5) * cfg.pixel_size_um - cell.y_um)
        near = near < cell.half_length_um + cell.radius_um + 0.6
        own = near & (sample.cell_id == i)
        core = own & (sample.coverage > 0.99)
        bg = near & (sample.coverage < 0.01)
        rim = near & (sample.coverage > 0.1) & (sample.coverage < 0.9) & ((sample.cell_id == i) | (sample.cell_id < 0))
        if core.sum() < 5 or bg.sum() < 5 or rim.sum() < 5:
            continue
        t_cell, t_bg = theta[core].mean(axis=0) / scale, theta[bg].mean(axis=0) / scale
        span = t_cell - t_bg
        if np.linalg.norm(span) < 1.0:
            continue
        t = (theta[rim] / scale - t_bg) @ span / (span @ span)
        ts.append(t)
        ws.append(sample.coverage[rim])
    assert len(ts) >= 5
    t_all, w_all = np.concatenate(ts), np.concatenate(ws)
    assert np.corrcoef(t_all, w_all)[0, 1] > 0.8
    assert np.mean(np.abs(t_all - w_all)) < 0.2


# --------------------------------------------------------------------------- cell geometry


def _extents(mask: np.ndarray, px: float) -> tuple[float, float, float]:
    """(length, width, area) in um of a pixel blob: extents along its principal axes."""
    r, c = np.nonzero(mask)
    pts = np.stack([c, r], axis=1).astype(np.float64)
    pts -= pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(pts.T))
    proj = pts @ vecs
    ext = np.ptp(proj, axis=0) + 1.0
    return float(ext.max() * px), float(ext.min() * px), float(mask.sum() * px * px)


def test_cells_have_the_right_shapes_and_sizes() -> None:
    cfg = BEPFMConfig(rows=192, cols=192, pixel_size_um=0.05, seed=5)  # finer pixels to measure shapes
    sample = BEPFMSample(cfg)
    px = cfg.pixel_size_um
    margin = 3
    inner = np.zeros(sample.label.shape, bool)
    inner[margin:-margin, margin:-margin] = True
    cocci, rods = [], []
    for i, cell in enumerate(sample.cells):
        mask = sample.cell_id == i
        if not mask.any() or np.any(mask & ~inner):
            continue  # cut by the frame
        length, width, area = _extents(mask, px)
        (cocci if cell.klass == 1 else rods).append((length, width, area, cell))
    assert len(cocci) >= 4 and len(rods) >= 4
    for length, width, area, cell in cocci:
        assert cell.half_length_um == 0.0 and 0.8 <= cell.width_um <= 1.2
        assert 2 * math.sqrt(area / math.pi) == pytest.approx(cell.width_um, abs=0.06)
        assert length / width < 1.2, "cocci are round"
    for length, width, area, cell in rods:
        assert 0.45 <= cell.width_um <= 0.7
        assert 2.0 - 1e-9 <= cell.length_um / cell.width_um <= 4.0 + 1e-9
        assert length == pytest.approx(cell.length_um, abs=2.5 * px)
        assert width == pytest.approx(cell.width_um, abs=2.5 * px)
        assert 1.7 < length / width < 4.5, "rods are elongated ~2:1 to 4:1"
    diam = np.mean([c.width_um for *_, c in cocci])
    assert diam == pytest.approx(1.0, abs=0.1)
    rod_len = np.mean([c.length_um for *_, c in rods])
    assert 1.5 < rod_len < 2.4
    # Random orientation of the rods.
    angles = np.array([c.angle_rad for c in sample.cells if c.klass == 2])
    assert np.all((angles >= 0) & (angles < math.pi)) and np.ptp(angles) > math.pi / 2


def test_cells_do_not_overlap(demo: BEPFMSample) -> None:
    cells = demo.cells
    assert sum(c.klass == 1 for c in cells) >= 8 and sum(c.klass == 2 for c in cells) >= 8
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            gap = segment_distance(a.segment(), b.segment()) - a.radius_um - b.radius_um
            assert gap >= demo.cfg.min_gap_um - 1e-9
    # Every cell owns one connected-ish blob: its pixels have the cell's class.
    for i, cell in enumerate(cells):
        sel = demo.cell_id == i
        if sel.any():
            assert np.all(demo.label[sel] == cell.klass)


def test_segment_distance() -> None:
    a = (np.array([0.0, 0.0]), np.array([2.0, 0.0]))
    assert segment_distance(a, (np.array([1.0, -1.0]), np.array([1.0, 1.0]))) == 0.0
    assert segment_distance(a, (np.array([3.0, 0.0]), np.array([4.0, 0.0]))) == pytest.approx(1.0)
    assert segment_distance(a, (np.array([1.0, 0.5]), np.array([1.0, 2.0]))) == pytest.approx(0.5)
    point = (np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    assert segment_distance(a, point) == pytest.approx(1.0)


# --------------------------------------------------------------------------- ground truth files and config


def test_ground_truth_round_trip(tmp_path: Path) -> None:
    cfg = BEPFMConfig(rows=32, cols=48, seed=12, noise=0.7, axis=Axis(size=100, offset=312.0, scale=0.7, units="kHz"))
    sample = BEPFMSample(cfg)
    path = tmp_path / "truth.npz"
    sample.save_ground_truth(path)
    truth = load_ground_truth(path)
    np.testing.assert_array_equal(truth["label"], sample.label)
    np.testing.assert_array_equal(truth["cell_id"], sample.cell_id)
    np.testing.assert_array_equal(truth["coverage"], sample.coverage)
    assert truth["label"].dtype == np.uint8
    assert set(truth["params"]) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(truth["params"][name], sample.params[name])
        assert truth["params"][name].dtype == np.float32
    assert truth["class_names"] == CLASSES and truth["components"] == COMPONENTS
    assert truth["axis"] == cfg.axis
    assert truth["config"] == cfg
    with np.load(path, allow_pickle=False) as raw:  # plain numpy, no pickle
        assert {"label", "class_names", "axis", "config", "param_f0_kHz"} <= set(raw.files)
    np.testing.assert_array_equal(BEPFMSample(truth["config"]).line(3), sample.line(3))
    source_path = tmp_path / "source.npz"
    BEPFMSource(cfg).save_ground_truth(source_path)
    np.testing.assert_array_equal(load_ground_truth(source_path)["label"], sample.label)


def test_other_axes_and_units() -> None:
    hz = Axis(size=64, offset=320_000.0, scale=1_000.0, units="Hz")
    np.testing.assert_allclose(axis_frequencies(hz), 320.0 + np.arange(64))
    sample = BEPFMSample(BEPFMConfig(rows=4, cols=8, axis=hz, noise=0.0))
    assert sample.line(0).shape == (8, 64, 2)
    with pytest.raises(ValueError):
        BEPFMConfig(axis=Axis(size=64, offset=0.0, scale=1.0, units="eV"))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        BEPFMConfig(rows=0)
    with pytest.raises(ValueError):
        BEPFMConfig(pixel_size_um=0.0)
    with pytest.raises(ValueError):
        BEPFMConfig(noise=-1.0)
    with pytest.raises(ValueError):
        BEPFMConfig(edge_um=0.0)
    with pytest.raises(ValueError):
        BEPFMConfig(seed=-1)
    empty = BEPFMSample(BEPFMConfig(rows=8, cols=8, cocci_per_100um2=0.0, rods_per_100um2=0.0))
    assert empty.cells == [] and np.all(empty.label == 0)
