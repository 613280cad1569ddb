"""Defect tracking: linking known trajectories, gating, gaps, and the dynamics recovered from simulations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanlens.pipeline import DefectTracker


def feed(tracker: DefectTracker, frames: dict[int, list[tuple[str, float, float, int]]], seed: int = 0):
    """Feed ``{frame: [(truth label, x, y, class), ...]}`` in shuffled order; return {label: [ids]}."""
    rng = np.random.default_rng(seed)
    seen: dict[str, list[int]] = {}
    for f in sorted(frames):
        dets = [frames[f][i] for i in rng.permutation(len(frames[f]))]
        xy = np.array([(x, y) for _, x, y, _ in dets], dtype=np.float64).reshape(-1, 2)
        cls = np.array([c for *_, c in dets], dtype=np.int64)
        ids = tracker.update(f, xy, cls)
        assert ids.shape == (len(dets),)
        for (label, *_), i in zip(dets, ids.tolist()):
            seen.setdefault(label, []).append(i)
    return seen


def walks(rng, n: int, steps: int, d: np.ndarray, *, spacing: float = 100.0) -> np.ndarray:
    """``n`` 2-D Gaussian random walks [n, steps, 2] on a wide grid; walker ``i`` has D = ``d[i]`` px²/frame."""
    side = int(np.ceil(np.sqrt(n)))
    start = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * spacing
    step = rng.standard_normal((n, steps - 1, 2)) * np.sqrt(2 * d)[:, None, None]
    return start[:, None, :] + np.concatenate([np.zeros((n, 1, 2)), np.cumsum(step, axis=1)], axis=1)


def run_movie(tracker: DefectTracker, pos: np.ndarray, cls: np.ndarray, frames=None) -> None:
    """Feed positions [n, T, 2] and classes [n, T] frame by frame (frame indices ``frames``, default 0..T-1)."""
    frames = range(pos.shape[1]) if frames is None else frames
    for t, f in enumerate(frames):
        tracker.update(f, pos[:, t], cls[:, t])


# ---------------------------------------------------------------- linking


def test_known_trajectories_come_out_with_consistent_ids():
    frames: dict[int, list] = {f: [] for f in range(10)}
    for f in range(10):
        frames[f].append(("a", 10 + 2.0 * f, 10.0, 0))           # moving right ...
        frames[f].append(("b", 30 - 2.0 * f, 13.0, 1))           # ... passing 3 px from b (gate 5) at f = 5
        if f != 4:
            frames[f].append(("c", 50 + 0.3 * (f % 2), 50.0, f % 2))  # missed at frame 4, class flickers
        if f >= 3:
            frames[f].append(("d", 80.0 + 0.5 * f, 80.0, 2))     # appears at frame 3
        if f <= 6:
            frames[f].append(("e", 100.0, 20.0 - f, 0))          # gone after frame 6
    tr = DefectTracker(3, gate_px=5.0, max_gap=1)
    seen = feed(tr, frames)

    for label, ids in seen.items():
        assert len(set(ids)) == 1, f"{label} was split over tracks {ids}"
    assert len({ids[0] for ids in seen.values()}) == 5
    assert len(tr.tracks) == 5
    for label, ids in seen.items():
        track = tr.tracks[ids[0]]
        expected = sorted(f for f, dets in frames.items() if any(d[0] == label for d in dets))
        assert track.frames == expected
        truth = {f: (x, y, c) for f, dets in frames.items() for (lab, x, y, c) in dets if lab == label}
        assert track.xy == [truth[f][:2] for f in expected]
        assert track.classes == [truth[f][2] for f in expected]
    assert tr.tracks[seen["c"][0]].frames == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert seen["e"][0] not in tr.active_ids  # missed frames 7, 8, 9 > max_gap
    assert set(tr.active_ids) == {seen[k][0] for k in "abcd"}


def test_hungarian_picks_the_globally_best_links_when_defects_cross_close():
    # greedy nearest-neighbour would give track "a" the detection 1.2 px away and leave "b" with a
    # 5.8 px link (outside the 5 px gate); the assignment keeps both tracks within the gate
    tr = DefectTracker(1, gate_px=5.0)
    a, b = tr.update(0, np.array([[0.0, 0.0], [6.0, 0.0]]), np.zeros(2, int))
    ids = tr.update(1, np.array([[1.2, 0.0], [-3.0, 0.0]]), np.zeros(2, int))
    assert ids.tolist() == [b, a]


def test_gap_longer_than_max_gap_ends_the_track():
    for max_gap, same in [(0, False), (1, False), (2, True)]:
        tr = DefectTracker(1, gate_px=3.0, max_gap=max_gap)
        first = tr.update(0, np.array([[5.0, 5.0]]), np.array([0]))[0]
        tr.update(1, np.zeros((0, 2)), np.zeros(0, int))
        tr.update(2, np.zeros((0, 2)), np.zeros(0, int))
        again = tr.update(3, np.array([[5.5, 5.0]]), np.array([0]))[0]
        assert bool(again == first) is same, max_gap


def test_gate_prevents_a_link_across_a_large_jump():
    tr = DefectTracker(2, gate_px=4.0, max_gap=1)
    t0 = tr.update(0, np.array([[0.0, 0.0], [100.0, 0.0]]), np.array([0, 1]))
    # defect 0 moves a little; defect 1 vanishes and an unrelated one appears 40 px away
    t1 = tr.update(1, np.array([[140.0, 0.0], [1.0, 1.0]]), np.array([1, 0]))
    assert t1[1] == t0[0]
    assert t1[0] not in t0
    assert t0[1] in tr.active_ids  # unmatched, but within max_gap
    t2 = tr.update(2, np.array([[141.0, 0.0], [2.0, 1.0]]), np.array([1, 0]))
    assert t2.tolist() == t1.tolist()
    assert t0[1] not in tr.active_ids
    # no transition was recorded for the jump: the only pairs are 0->0 (twice) and 1->1 (once)
    assert tr.transition_matrix()["counts"].tolist() == [[2, 0], [0, 1]]


def test_linking_ignores_class():
    tr = DefectTracker(3, gate_px=2.0)
    ids = [tr.update(f, np.array([[10.0 + 0.5 * f, 10.0]]), np.array([f % 3]))[0] for f in range(6)]
    assert len(set(ids)) == 1
    assert tr.tracks[ids[0]].classes == [0, 1, 2, 0, 1, 2]


def test_bad_input_is_rejected():
    tr = DefectTracker(2, gate_px=2.0)
    tr.update(3, np.array([[1.0, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="frames must increase"):
        tr.update(3, np.array([[1.0, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        tr.update(4, np.array([1.0, 1.0]), np.array([0]))
    with pytest.raises(ValueError, match="classes must lie"):
        tr.update(4, np.array([[1.0, 1.0]]), np.array([2]))
    with pytest.raises(ValueError, match="NaN"):
        tr.update(4, np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="class_names"):
        DefectTracker(2, gate_px=1.0, class_names=["a"])
    assert tr.n_frames == 1 and len(tr.tracks) == 1


# ---------------------------------------------------------------- skipped frame indices


def test_a_step_across_a_skipped_frame_is_lag_two():
    frames = [0, 1, 2, 4, 5, 6, 8, 9, 10, 11]  # 3 and 7 dropped upstream (newest frame wins)
    tr = DefectTracker(1, gate_px=3.0, max_gap=1)
    for f in frames:
        tr.update(f, np.array([[float(f), 0.0]]), np.array([0]))  # 1 px per frame, in a straight line
    assert len(tr.tracks) == 1
    r = tr.diffusion(max_lag=3, min_points=1)["0"]
    assert r["msd"] == [1.0, 4.0, 9.0]  # a skipped step counted as lag 1 would put a 4 into the lag-1 mean
    pairs = {lag: sum(1 for i, a in enumerate(frames) for b in frames[i + 1:] if b - a == lag) for lag in (1, 2, 3)}
    assert r["counts"] == [pairs[1], pairs[2], pairs[3]]
    assert tr.transition_matrix()["counts"].tolist() == [[pairs[1]]]


def test_running_msd_matches_a_brute_force_count_over_the_tracks():
    """Random classes, missing detections and dropped frames: the incremental sums equal a full re-scan."""
    rng = np.random.default_rng(7)
    n, steps, k = 30, 120, 5
    pos = walks(rng, n, steps, np.full(n, 0.5))
    cls = np.zeros((n, steps), int)  # sticky classes: runs of ~8 observations
    for t in range(1, steps):
        cls[:, t] = np.where(rng.random(n) < 0.12, rng.integers(0, 3, n), cls[:, t - 1])
    seen = rng.random((n, steps)) > 0.1
    frames = np.sort(rng.choice(150, size=steps, replace=False))
    tr = DefectTracker(3, gate_px=8.0, max_gap=2, lag_window=k)
    for t, f in enumerate(frames):
        tr.update(int(f), pos[seen[:, t], t], cls[seen[:, t], t])

    sums, counts = np.zeros((3, k)), np.zeros((3, k), int)
    trans = np.zeros((3, 3), int)
    for track in tr.tracks.values():
        fr, xy, c = np.array(track.frames), np.array(track.xy), np.array(track.classes)
        for i in range(len(fr)):
            for j in range(i + 1, len(fr)):
                lag = fr[j] - fr[i]
                if lag == 1:
                    trans[c[i], c[j]] += 1
                if lag <= k and (c[i:j + 1] == c[i]).all():
                    sums[c[i], lag - 1] += ((xy[j] - xy[i]) ** 2).sum()
                    counts[c[i], lag - 1] += 1
    d = tr.diffusion(max_lag=k, min_points=1)
    for c in range(3):
        lags = np.flatnonzero(counts[c]) + 1
        assert d[str(c)]["lags"] == lags.tolist()
        np.testing.assert_array_equal(d[str(c)]["counts"], counts[c, lags - 1])
        np.testing.assert_allclose(d[str(c)]["msd"], sums[c, lags - 1] / counts[c, lags - 1], rtol=1e-12)
    assert (counts > 100).all()
    np.testing.assert_array_equal(tr.transition_matrix()["counts"], trans)


# ---------------------------------------------------------------- diffusion


@pytest.mark.parametrize("noise_px", [0.0, 0.3])
def test_diffusion_of_two_classes_of_random_walkers(noise_px):
    rng = np.random.default_rng(11)
    n, steps = 80, 250
    d_true = np.repeat([0.3, 1.2], n // 2)
    pos = walks(rng, n, steps, d_true) + noise_px * rng.standard_normal((n, steps, 2))
    cls = np.repeat(np.repeat([[0], [1]], n // 2, axis=0), steps, axis=1)
    tr = DefectTracker(2, gate_px=10.0, class_names=["slow", "fast"])
    run_movie(tr, pos, cls)
    assert len(tr.tracks) == n and all(len(t) == steps for t in tr.tracks.values())

    d = tr.diffusion(max_lag=4)
    for name, truth in [("slow", 0.3), ("fast", 1.2)]:
        assert abs(d[name]["D"] / truth - 1) < 0.05, (name, d[name]["D"], truth)
        assert d[name]["n_displacements"] == (n // 2) * sum(steps - lag for lag in range(1, 5))
        # the offset recovers the per-axis localisation variance (its spread grows with D)
        assert abs(d[name]["loc_var"] - noise_px**2) < 0.06 * truth
    # the noise would bias a fit through the origin: (D + sigma^2/3) is 10 % high for the slow class
    if noise_px:
        msd, lags = np.array(d["slow"]["msd"]), np.arange(1, 5)
        assert (msd @ lags) / (lags @ lags) / 4 / 0.3 - 1 > 0.07


def test_class_changes_are_excluded_from_diffusion():
    """Walkers switch class now and then; the switching step is a 6 px jump that must not count."""
    rng = np.random.default_rng(3)
    n, steps = 80, 300
    d_of = np.array([0.25, 1.0])
    cls = np.zeros((n, steps), int)
    cls[:, 0] = rng.integers(0, 2, n)
    for t in range(1, steps):
        flip = rng.random(n) < 0.04
        cls[:, t] = np.where(flip, 1 - cls[:, t - 1], cls[:, t - 1])
    step = rng.standard_normal((n, steps - 1, 2)) * np.sqrt(2 * d_of[cls[:, :-1]])[..., None]
    jump = cls[:, 1:] != cls[:, :-1]
    angle = rng.uniform(0, 2 * np.pi, (n, steps - 1))
    step[jump] = 6.0 * np.stack([np.cos(angle), np.sin(angle)], -1)[jump]
    start = walks(rng, n, 1, np.zeros(n), spacing=150.0)
    pos = start + np.concatenate([np.zeros((n, 1, 2)), np.cumsum(step, axis=1)], axis=1)
    tr = DefectTracker(2, gate_px=12.0)
    run_movie(tr, pos, cls)
    assert len(tr.tracks) == n

    d = tr.diffusion(max_lag=4)
    for c in (0, 1):
        assert abs(d[str(c)]["D"] / d_of[c] - 1) < 0.05, (c, d[str(c)]["D"])
        same = (cls[:, 1:] == cls[:, :-1]) & (cls[:, :-1] == c)
        assert d[str(c)]["counts"][0] == same.sum()
    # with the jumps included, lag-1 MSD of the slow class would be several times 4 * D
    assert d["0"]["msd"][0] < 1.1 * 4 * 0.25


def test_a_class_without_enough_data_gets_none():
    tr = DefectTracker(3, gate_px=5.0)
    for f in range(30):
        tr.update(f, np.array([[0.1 * f, 0.0], [50.0, 50.0]]), np.array([0, 2 if f == 10 else 1]))
    d = tr.diffusion(max_lag=4, min_points=20)
    assert d["0"] is not None and d["1"] is not None
    assert d["2"] is None
    with pytest.raises(ValueError, match="max_lag"):
        tr.diffusion(max_lag=tr.lag_window + 1)


# ---------------------------------------------------------------- transitions


def test_transition_matrix_of_simulated_markov_chains():
    p_true = np.array([[0.70, 0.20, 0.05, 0.05],
                       [0.10, 0.60, 0.20, 0.10],
                       [0.05, 0.15, 0.75, 0.05],
                       [0.25, 0.05, 0.10, 0.60]])
    rng = np.random.default_rng(5)
    n, steps = 50, 1000
    cum = np.cumsum(p_true, axis=1)
    cls = np.zeros((n, steps), int)
    cls[:, 0] = rng.integers(0, 4, n)
    for t in range(1, steps):
        u = rng.random(n)
        cls[:, t] = (u[:, None] > cum[cls[:, t - 1]]).sum(axis=1)
    pos = walks(rng, n, steps, np.full(n, 0.05)) + 0.1 * rng.standard_normal((n, steps, 2))
    tr = DefectTracker(4, gate_px=5.0, class_names=["V_S", "V_S2", "Mo_S", "S_Mo"])
    run_movie(tr, pos, cls)
    assert len(tr.tracks) == n

    tm = tr.transition_matrix()
    assert tm["classes"] == ["V_S", "V_S2", "Mo_S", "S_Mo"]
    assert tm["counts"].sum() == n * (steps - 1)
    np.testing.assert_array_equal(tm["row_counts"], tm["counts"].sum(axis=1))
    np.testing.assert_allclose(tm["probabilities"].sum(axis=1), 1.0)
    assert np.abs(tm["probabilities"] - p_true).max() < 0.02


def test_transitions_need_consecutive_frames_and_empty_rows_are_nan():
    tr = DefectTracker(3, gate_px=5.0, max_gap=2)
    for f, c in [(0, 0), (1, 1), (3, 0), (4, 0)]:  # 1 -> 0 spans a missed frame: not counted
        tr.update(f, np.array([[1.0, 1.0]]), np.array([c]))
    tm = tr.transition_matrix()
    assert tm["counts"].tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert tm["row_counts"].tolist() == [2, 0, 0]
    assert np.isnan(tm["probabilities"][1:]).all()
    np.testing.assert_allclose(tm["probabilities"][0], [0.5, 0.5, 0.0])


# ---------------------------------------------------------------- summary


def test_summary_is_json_ready_and_has_nm_units():
    rng = np.random.default_rng(2)
    n, steps = 20, 60
    pos = walks(rng, n, steps, np.full(n, 0.5))
    cls = np.zeros((n, steps), int)
    tr = DefectTracker(3, gate_px=8.0, class_names=["vacancy", "dopant", "divacancy"])
    run_movie(tr, pos, cls)

    plain = tr.summary()
    s = tr.summary(pixel_size_nm=0.02)
    json.dumps(s, allow_nan=False)
    json.dumps(plain, allow_nan=False)
    assert s["n_tracks"] == n and s["mean_track_length"] == steps and s["n_frames"] == steps
    vac = s["diffusion"]["classes"]["vacancy"]
    assert vac["D_nm2_per_frame"] == pytest.approx(vac["D_px2_per_frame"] * 0.02**2)
    assert "D_nm2_per_frame" not in plain["diffusion"]["classes"]["vacancy"]
    assert "D_nm2_per_s" not in vac and s["frame_interval_s"] is None
    timed = tr.summary(pixel_size_nm=0.02, frame_interval_s=0.04)
    t_vac = timed["diffusion"]["classes"]["vacancy"]
    assert timed["frame_interval_s"] == 0.04
    assert t_vac["D_nm2_per_s"] == pytest.approx(vac["D_nm2_per_frame"] / 0.04)
    assert t_vac["D_stderr_nm2_per_s"] == pytest.approx(vac["D_stderr_nm2_per_frame"] / 0.04)
    with pytest.raises(ValueError, match="frame_interval_s"):
        tr.summary(pixel_size_nm=0.02, frame_interval_s=0.0)
    assert s["diffusion"]["classes"]["dopant"] is None
    assert s["transitions"]["classes"] == ["vacancy", "dopant", "divacancy"]
    assert s["transitions"]["probabilities"][0] == [1.0, 0.0, 0.0]
    assert s["transitions"]["probabilities"][1] == [None, None, None]
    assert s["transitions"]["counts"][0][0] == n * (steps - 1)
