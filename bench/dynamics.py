"""How well a movie's defect dynamics can be estimated: the tracker on the simulator's own defect
positions over many seeds (no network: the statistical floor of the haadf demo's D and transitions).

    python bench/dynamics.py [--seeds 20] [--size 1024] [--defects 32] [--frames 100] [--json]
    python bench/dynamics.py --seeds 2 --size 256 --defects 4 --frames 20 --json   # small run, ~2 s

For each seed, the simulator's ground-truth defect positions (in image coordinates, with drift, plus
Gaussian localisation noise of ``--noise-px``) and classes go frame by frame through the service's
``DefectTracker`` with the shipped model's gate; the diffusion coefficients (covariance-based estimator)
and the transition matrix are compared with the simulator's. Reports per defect class the mean and
spread of the relative error of D, the share of seeds within 25 %, the spread of (D - D_true) / s.e.
(about 1 when the reported standard errors are honest), and the largest transition-matrix error.
The haadf demo runs the same tracker on the network's detections of the same movie (seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scanlens.sim.stem import DEFECT_CLASSES, STEMConfig, STEMMovie  # noqa: E402
from scanlens.model_files import MODEL_DIR  # noqa: E402
from scanlens.pipeline import OnnxModel  # noqa: E402
from scanlens.pipeline import DefectTracker  # noqa: E402


def one_seed(cfg: STEMConfig, gate_nm: float, noise_px: float) -> tuple[list[float], list[float], float]:
    movie = STEMMovie(cfg)
    tracker = DefectTracker(len(DEFECT_CLASSES), gate_px=gate_nm / cfg.pixel_size_nm, max_gap=1,
                            class_names=DEFECT_CLASSES)
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.frames):
        xy = movie.specimen_to_image(i, movie.trajectories[i])
        tracker.update(i, xy + rng.normal(0.0, noise_px, xy.shape), movie.classes[i].astype(np.int64))
    d = tracker.diffusion()
    rel, z = [], []
    for k, name in enumerate(DEFECT_CLASSES):
        r, true = d[name], movie.diffusion_px2[k]
        ok = r is not None and r["D"] is not None
        rel.append(r["D"] / true - 1.0 if ok else np.nan)
        z.append((r["D"] - true) / r["D_stderr"] if ok and r["D_stderr"] else np.nan)
    err = np.abs(tracker.transition_matrix()["probabilities"] - movie.transition_matrix)
    return rel, z, float(np.nanmax(err))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=20, help="movies to simulate (seeds 0..N-1)")
    p.add_argument("--size", type=int, default=1024, help="frame edge, px (the demo's)")
    p.add_argument("--defects", type=int, default=32, help="defects per movie (the demo's)")
    p.add_argument("--frames", type=int, default=100, help="frames per movie (the demo's)")
    p.add_argument("--noise-px", type=float, default=0.3, help="rms localisation noise per axis, px")
    p.add_argument("--model", default="stem-unet", help="model whose card gives the tracker's gate")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()

    gate_nm = float(OnnxModel.open(MODEL_DIR / f"{a.model}.onnx", threads=1).card.postprocess["track_gate_nm"])
    rel, z, trans = [], [], []
    t0 = time.perf_counter()
    for seed in range(a.seeds):
        cfg = STEMConfig(size=a.size, n_defects=a.defects, frames=a.frames, seed=seed)
        r, zz, t = one_seed(cfg, gate_nm, a.noise_px)
        rel.append(r)
        z.append(zz)
        trans.append(t)
        print(f"seed {seed + 1}/{a.seeds}: D rel. error " + " ".join(f"{v:+.3f}" for v in r)
              + f"; transitions max error {t:.3f}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    rel_a, z_a, trans_a = np.array(rel), np.array(z), np.array(trans)
    report = {
        "seeds": a.seeds, "size": a.size, "defects": a.defects, "frames": a.frames, "noise_px": a.noise_px,
        "gate_nm": gate_nm,
        "diffusion": {name: {"mean_rel_error": float(np.nanmean(rel_a[:, k])),
                             "std_rel_error": float(np.nanstd(rel_a[:, k])),
                             "max_abs_rel_error": float(np.nanmax(np.abs(rel_a[:, k]))),
                             "share_within_25pct": float(np.mean(np.abs(rel_a[:, k]) <= 0.25)),
                             "z_std": float(np.nanstd(z_a[:, k]))}
                      for k, name in enumerate(DEFECT_CLASSES)},
        "all_classes_within_25pct": float(np.mean(np.all(np.abs(rel_a) <= 0.25, axis=1))),
        "transition_max_error_mean": float(trans_a.mean()), "transition_max_error_max": float(trans_a.max()),
        "transitions_within_0.05": float(np.mean(trans_a <= 0.05)),
    }
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{a.seeds} movies of {a.frames} frames, {a.size}² px, {a.defects} defects, gate {gate_nm} nm")
    print(f"{'class':<20}{'mean err':>10}{'std':>8}{'max |err|':>11}{'<= 25 %':>9}{'z std':>7}")
    for name, r in report["diffusion"].items():
        print(f"{name:<20}{r['mean_rel_error']:>+10.3f}{r['std_rel_error']:>8.3f}{r['max_abs_rel_error']:>11.3f}"
              f"{r['share_within_25pct']:>9.2f}{r['z_std']:>7.2f}")
    print(f"all four classes within 25 %: {report['all_classes_within_25pct']:.2f} of the movies")
    print(f"transition matrix, max |error|: mean {report['transition_max_error_mean']:.3f}, "
          f"worst {report['transition_max_error_max']:.3f}; <= 0.05 in {report['transitions_within_0.05']:.2f}")


if __name__ == "__main__":
    main()
