"""Physics of the switching-loop simulator: closed, saturated, hysteretic loops, the effect of each kind of disorder,
determinism, the sample's disorder regions, scan lines and ground-truth files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanlens.sim.loops import (
    BLOCK,
    COMPONENTS,
    DEFAULT_AXIS,
    H_MAX,
    PARAM_UNITS,
    PARAMS,
    LoopsConfig,
    LoopsSample,
    LoopsSource,
    axis_fields,
    load_ground_truth,
    simulate_loops,
    simulate_loops_parallel,
)
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis

H = axis_fields(DEFAULT_AXIS)


def _loops(j0: float, dj: float, dh: float, n: int = 16, seed: int = 0, **kw) -> np.ndarray:  # type: ignore[no-untyped-def]
    return simulate_loops(np.full(n, j0), dj, dh, rng=np.random.default_rng(seed), **kw)


def _crossing(branch: np.ndarray, level: float) -> float:
    """Field where a rising branch (mean over loops) first reaches ``level``, linearly interpolated."""
    k = int(np.argmax(branch >= level))
    assert k > 0, "branch starts above the level"
    return float(np.interp(level, branch[k - 1 : k + 1], H[k - 1 : k + 1]))


def _mean_branches(loops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = loops.mean(axis=0)
    return mean[:, 0], mean[:, 1]


def _coercive_field(loops: np.ndarray) -> float:
    """Half the distance between the zero crossings of the two (rising in H) branches."""
    up, down = _mean_branches(loops)
    return 0.5 * (_crossing(up, 0.0) - _crossing(down, 0.0))


def _switching_width(loops: np.ndarray) -> float:
    """Field span over which the ascending branch goes from -0.8 to +0.8."""
    up, _ = _mean_branches(loops)
    return _crossing(up, 0.8) - _crossing(up, -0.8)


# --------------------------------------------------------------------------- API and loop shape


def test_defaults_match_the_published_api() -> None:
    assert PARAMS == ("J0", "dJ", "dh")
    assert COMPONENTS == ("up", "down")
    assert len(PARAM_UNITS) == 3
    assert DEFAULT_AXIS.units == "a.u." and DEFAULT_AXIS.size == 64
    assert DEFAULT_AXIS.offset == pytest.approx(-H_MAX) and DEFAULT_AXIS.end == pytest.approx(H_MAX)
    cfg = LoopsConfig()
    assert (cfg.rows, cfg.cols, cfg.axis, cfg.seed) == (64, 64, DEFAULT_AXIS, 0)
    assert 0 < cfg.noise < 0.1


def test_loops_have_the_right_shape_and_are_deterministic() -> None:
    a = _loops(2.0, 0.5, 1.0, n=5, seed=3)
    assert a.shape == (5, DEFAULT_AXIS.size, 2) and a.dtype == np.float32
    assert np.all(np.abs(a) <= 1.0)
    np.testing.assert_array_equal(a, _loops(2.0, 0.5, 1.0, n=5, seed=3))
    assert not np.array_equal(a, _loops(2.0, 0.5, 1.0, n=5, seed=4))
    # Parameters broadcast; every loop has its own quenched disorder.
    b = simulate_loops(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]), 0.5, rng=np.random.default_rng(0))
    assert b.shape == (3, 64, 2)
    with pytest.raises(ValueError):
        simulate_loops(1.0, -0.1, 0.5, rng=np.random.default_rng(0))


@pytest.mark.parametrize(("j0", "dj", "dh"), [(2.0, 0.3, 0.5), (1.0, 1.0, 2.0), (3.0, 2.0, 3.0)])
def test_loops_close_and_saturate_at_the_sweep_ends(j0: float, dj: float, dh: float) -> None:
    loops = _loops(j0, dj, dh, n=8)
    up, down = loops[..., 0], loops[..., 1]
    np.testing.assert_allclose(up[:, 0], -1.0, atol=0.02)
    np.testing.assert_allclose(down[:, 0], -1.0, atol=0.02)
    np.testing.assert_allclose(up[:, -1], 1.0, atol=0.02)
    np.testing.assert_allclose(down[:, -1], 1.0, atol=0.02)
    # Both branches meet at both ends (the loop closes), and the descending branch never lies below.
    assert np.all(np.abs(up[:, [0, -1]] - down[:, [0, -1]]) < 0.02)
    assert np.mean(down - up) > 0


def test_loops_are_hysteretic_and_symmetric() -> None:
    loops = _loops(2.0, 0.3, 0.5, n=16)
    up, down = _mean_branches(loops)
    middle = slice(28, 36)  # around H = 0
    assert np.all(up[middle] < -0.9) and np.all(down[middle] > 0.9), "remanent polarisation is kept"
    hc_up, hc_down = _crossing(up, 0.0), -_crossing(down, 0.0)
    assert hc_up > 2.0 and hc_down > 2.0
    assert hc_up == pytest.approx(hc_down, rel=0.1), "P(H) -> -P(-H) symmetry of the two branches"


def test_random_fields_spread_the_switching() -> None:
    widths = [_switching_width(_loops(2.0, 0.2, dh)) for dh in (0.3, 2.0, 4.0, 5.6)]
    assert all(b > a for a, b in zip(widths, widths[1:])), widths
    assert widths[-1] > 3 * widths[0]
    # ... and they lower the coercive field (random fields nucleate switching early).
    hc = [_coercive_field(_loops(2.0, 0.2, dh)) for dh in (0.3, 2.0, 4.0)]
    assert hc[0] > hc[1] > hc[2]


def test_stronger_coupling_widens_the_loop() -> None:
    hc = [_coercive_field(_loops(j0, 0.3, 1.0)) for j0 in (1.0, 1.5, 2.0, 2.5, 3.0)]
    assert all(b > a for a, b in zip(hc, hc[1:])), hc
    areas = [float(np.trapezoid((lambda m: m[:, 1] - m[:, 0])(_loops(j0, 0.3, 1.0).mean(0)), H)) for j0 in (1.0, 3.0)]
    assert areas[1] > 2 * areas[0]


def test_random_bonds_round_the_onset_of_switching() -> None:
    # Weakly coupled spins flip on their own before the avalanche: the ascending branch leaves -1 earlier
    # relative to its coercive field as dJ grows.
    lead = []
    for dj in (0.2, 1.5, 3.0):
        loops = _loops(2.0, dj, 0.3)
        up, _ = _mean_branches(loops)
        lead.append(_crossing(up, 0.0) - _crossing(up, -0.95))
    assert lead[0] < lead[1] < lead[2], lead


def test_the_loop_does_not_depend_on_how_it_is_sampled() -> None:
    fine = Axis(size=127, offset=-H_MAX, scale=2 * H_MAX / 126, units="a.u.")
    coarse = _loops(1.5, 0.8, 1.5, n=6, seed=9)
    dense = _loops(1.5, 0.8, 1.5, n=6, seed=9, axis=fine)
    assert dense.shape == (6, 127, 2)
    np.testing.assert_allclose(dense[:, ::2], coarse, atol=1e-5)
    np.testing.assert_allclose(AxisMap.build(fine, DEFAULT_AXIS).apply(dense), coarse, atol=1e-5)
    inner = Axis(size=50, offset=-5.0, scale=0.2, units="a.u.")
    assert _loops(1.5, 0.8, 1.5, n=2, axis=inner).shape == (2, 50, 2)
    with pytest.raises(ValueError):
        _loops(1.5, 0.8, 1.5, n=2, axis=Axis(size=64, offset=-20.0, scale=0.5, units="a.u."))
    with pytest.raises(ValueError):
        _loops(1.5, 0.8, 1.5, n=2, axis=Axis(size=64, offset=-1.0, scale=0.01, units="V"))


def test_parallel_simulation_is_independent_of_the_worker_count() -> None:
    n = 2 * BLOCK + 5
    j0 = np.linspace(1.0, 3.0, n)
    kw = {"seed": 4, "lattice": 8, "grains": 1}
    seen: list[tuple[int, int]] = []
    one = simulate_loops_parallel(j0, 0.5, 1.0, workers=1, progress=lambda d, t: seen.append((d, t)), **kw)
    two = simulate_loops_parallel(j0, 0.5, 1.0, workers=2, **kw)
    assert one.shape == (n, 64, 2)
    np.testing.assert_array_equal(one, two)
    assert seen == [(1, 3), (2, 3), (3, 3)]


# --------------------------------------------------------------------------- the sample


@pytest.fixture(scope="module")
def demo() -> LoopsSample:
    return LoopsSample(LoopsConfig())


def test_parameter_maps_are_smooth_and_span_the_configured_ranges(demo: LoopsSample) -> None:
    cfg = demo.cfg
    assert set(demo.params) == set(PARAMS)
    for name, levels in zip(PARAMS, (cfg.j0_range, cfg.dJ_levels, cfg.dh_levels)):
        m = demo.params[name]
        assert m.shape == (64, 64) and m.dtype == np.float32
        lo, hi = levels
        assert m.min() >= lo - 1e-5 and m.max() <= hi + 1e-5
        assert m.max() - m.min() > 0.8 * (hi - lo), f"{name} uses its whole range"
        step = max(np.abs(np.diff(m, axis=0)).max(), np.abs(np.diff(m, axis=1)).max())
        # J0 wanders smoothly; region edges are soft, spread over a few pixels (no checkerboard of constants)
        assert step < (0.05 if name == "J0" else 0.5) * (hi - lo), name
    assert demo.params["J0"].min() == pytest.approx(cfg.j0_range[0]) and demo.params["J0"].max() == pytest.approx(
        cfg.j0_range[1])
    assert len(np.unique(np.round(demo.params["J0"], 3))) > 500, "J0 varies continuously"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sample_has_random_bond_random_field_and_mixed_regions(seed: int) -> None:
    sample = LoopsSample(LoopsConfig(seed=seed))
    cfg = sample.cfg
    region, dj, dh = sample.region, sample.params["dJ"], sample.params["dh"]
    share = np.bincount(region.reshape(-1), minlength=4) / region.size
    assert np.all(share > 0.05), f"clean, random-bond, random-field and mixed regions all present: {share}"
    assert share[1] + share[3] == pytest.approx(cfg.bond_fraction, abs=0.02)
    assert share[2] + share[3] == pytest.approx(cfg.field_fraction, abs=0.02)
    mid_j = 0.5 * sum(cfg.dJ_levels)
    mid_h = 0.5 * sum(cfg.dh_levels)
    rb, rf, mixed, clean = region == 1, region == 2, region == 3, region == 0
    assert np.median(dj[rb]) > 0.8 * cfg.dJ_levels[1] and np.median(dh[rb]) < 0.2 * mid_h
    assert np.median(dh[rf]) > 0.8 * cfg.dh_levels[1] and np.median(dj[rf]) < 0.2 * mid_j
    assert np.median(dj[mixed]) > 0.8 * cfg.dJ_levels[1] and np.median(dh[mixed]) > 0.8 * cfg.dh_levels[1]
    assert np.median(dj[clean]) < 0.2 * mid_j and np.median(dh[clean]) < 0.2 * mid_h
    # Regions are patches, not speckle: most pixels share the region of their right-hand neighbour.
    assert np.mean(region[:, 1:] == region[:, :-1]) > 0.85
    assert not np.array_equal(region, LoopsSample(LoopsConfig(seed=seed + 10)).region)


@pytest.fixture(scope="module")
def small() -> LoopsSample:
    return LoopsSample(LoopsConfig(rows=6, cols=12, seed=5))


def test_lines_are_noisy_loops_deterministic_per_seed_and_row(small: LoopsSample) -> None:
    first = small.line(4)
    assert first.shape == (12, 64, 2) and first.dtype == np.float32
    assert np.all(np.isfinite(first))
    small.line(1)  # any order
    np.testing.assert_array_equal(first, small.line(4))
    fresh = LoopsSample(small.cfg)
    np.testing.assert_array_equal(first, fresh.line(4))
    assert not np.array_equal(first, small.line(3))
    assert not np.array_equal(first, LoopsSample(LoopsConfig(rows=6, cols=12, seed=6)).line(4))
    with pytest.raises(IndexError):
        small.line(6)
    # The noise is white with the configured rms on top of the noise-free loops of those pixels.
    resid = np.stack([small.line(r) - small.expected_line(r) for r in range(6)])
    assert resid.std() == pytest.approx(small.cfg.noise, rel=0.05)
    assert abs(resid.mean()) < 0.1 * small.cfg.noise
    clean = small.expected_line(2)
    row_params = [small.params[p][2] for p in PARAMS]
    direct = simulate_loops(*row_params, rng=np.random.default_rng(np.random.SeedSequence(5, spawn_key=(2, 2))))
    np.testing.assert_array_equal(clean, direct)


def test_precompute_gives_the_lazy_lines(small: LoopsSample) -> None:
    other = LoopsSample(LoopsConfig(rows=6, cols=12, seed=5))
    seconds = other.precompute(workers=2)
    assert seconds >= 0
    for r in range(6):
        np.testing.assert_array_equal(other.expected_line(r), small.expected_line(r))
        np.testing.assert_array_equal(other.line(r), small.line(r))


# --------------------------------------------------------------------------- ground truth, source, config


def test_ground_truth_round_trip(tmp_path, small: LoopsSample) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "truth.npz"
    small.save_ground_truth(path)
    truth = load_ground_truth(path)
    for name in PARAMS:
        np.testing.assert_array_equal(truth["params"][name], small.params[name])
        assert truth["params"][name].dtype == np.float32
    np.testing.assert_array_equal(truth["region"], small.region)
    assert truth["param_names"] == PARAMS and truth["param_units"] == PARAM_UNITS
    assert truth["components"] == COMPONENTS
    assert truth["axis"] == small.cfg.axis
    assert truth["config"] == small.cfg
    with np.load(path, allow_pickle=False) as raw:
        assert {"param_J0", "param_dJ", "param_dh", "region", "config"} <= set(raw.files)
    np.testing.assert_array_equal(LoopsSample(truth["config"]).line(2), small.line(2))


def test_source_plays_the_sample() -> None:
    cfg = LoopsConfig(rows=3, cols=5, seed=2)
    src = LoopsSource(cfg)
    assert src.modality == "loops"
    assert src.shape == (3, 5) and src.axis == cfg.axis
    assert src.components == ["up", "down"]
    json.dumps(src.meta)  # plain values only: it travels in the scan_start header
    np.testing.assert_array_equal(src.line(1), src.sample.line(1))
    assert src.line(0).shape == (5, cfg.axis.size, len(src.components))


def test_config_round_trip_and_validation() -> None:
    cfg = LoopsConfig(rows=8, cols=9, noise=0.05, seed=3, j0_range=(1.0, 2.0), bond_fraction=0.3)
    assert LoopsConfig.from_json(cfg.to_json()) == cfg
    for bad in ({"rows": 0}, {"noise": -0.1}, {"j0_range": (2.0, 1.0)}, {"dh_levels": (-1.0, 2.0)},
                {"bond_fraction": 1.0}, {"region_px": 0.0},
                {"axis": Axis(size=64, offset=-30.0, scale=1.0, units="a.u.")}):
        with pytest.raises(ValueError):
            LoopsConfig(**bad)  # type: ignore[arg-type]
