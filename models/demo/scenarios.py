"""What the demo needs per modality: simulator arguments, ground truth, scores and figure panels.

Each scenario scores the live maps (as the subscriber assembled them, completed by the final
snapshot) against the ground truth the simulator saved, and lays out the PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scanlens.models.scoring import detection_score, roc_auc
from scanlens.client import ControlReply, ScanResult

from .figures import Panel


def r2(pred: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination of ``pred`` against ``truth`` (1 = perfect, 0 = the mean)."""
    truth = truth.astype(np.float64).ravel()
    resid = np.sum((pred.astype(np.float64).ravel() - truth) ** 2)
    return float(1.0 - resid / max(np.sum((truth - truth.mean()) ** 2), 1e-30))


@dataclass
class Scenario:
    modality: str
    recognizer: str  # the default recognizer
    load_truth: Callable[[Path], dict[str, Any]]
    score: Callable[[ScanResult, ControlReply, dict[str, Any], str], dict[str, Any]]
    panels: Callable[[ScanResult, ControlReply, dict[str, Any], str], list[Panel]]
    sim_args: Callable[[dict[str, Any]], list[str]] = lambda options: []
    shape: tuple[int, int] = (128, 128)  # default scan size of the demo (imaging: frame size)
    imaging: bool = False  # a movie of frames rather than a spectral scan


# --------------------------------------------------------------------------- shared pieces


def pca_score(result: ScanResult) -> dict[str, Any]:
    s = result.summary.recognizers.get("pca")
    return {"pca_explained_variance": [round(v, 5) for v in s.explained_variance_ratio]} if s else {}


def pca_panels(snapshot: ControlReply, result: ScanResult) -> list[Panel]:
    """Two final score maps and the loadings, plotted against the scan's own axis (PCA resamples it)."""
    if "pca/scores" not in snapshot.arrays:
        return []
    scores = snapshot.arrays["pca/scores"]
    ratio = result.summary.recognizers["pca"].explained_variance_ratio
    panels = [Panel(f"PCA score {k + 1} ({100 * ratio[k]:.1f} % of variance)", scores[..., k], cmap="RdBu_r",
                    vmin=-np.abs(scores[..., k]).max(), vmax=np.abs(scores[..., k]).max()) for k in range(2)]
    axis, components = result.started.axis, result.started.components
    loadings = snapshot.arrays["pca/loadings"][:3]
    what = ""
    if components:  # flattened [channels, components]: show the first component
        loadings = loadings.reshape(len(loadings), -1, len(components))[..., 0]
        what = f" ({components[0]})"
    x = np.linspace(axis.offset, axis.end, loadings.shape[1])
    panels.append(Panel("PCA loadings" + what, loadings, kind="lines", x=x, xlabel=axis.units,
                        labels=[f"pc{k + 1}" for k in range(len(loadings))]))
    return panels


def class_panels(truth: np.ndarray, maps: dict[str, np.ndarray], labels: list[str], what: str) -> list[Panel]:
    return [Panel(f"ground truth {what}", truth, kind="classes", labels=labels),
            Panel(f"recognized {what} (live)", maps["class"], kind="classes", labels=labels,
                  marks=maps["class"] != truth, marks_label="misclassified"),
            Panel("confidence", maps["confidence"], vmin=0.0, vmax=1.0)]


# --------------------------------------------------------------------------- EELS


def _eels_truth(path: Path) -> dict[str, Any]:
    from scanlens.sim.eels import load_ground_truth

    return load_ground_truth(path)


def _eels_score(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> dict[str, Any]:
    maps = result.maps[rec]
    out: dict[str, Any] = {}
    if "class" in maps:
        out["accuracy"] = float(np.mean(maps["class"] == truth["phase"]))
    unknown = truth.get("unknown")
    known = np.ones(truth["phase"].shape, bool) if unknown is None else unknown < 1e-3
    # abundances of the three reference phases are only defined where no unknown phase is mixed in
    err = (maps["abundance"] - truth["abundance"])[known]
    out["abundance_rmse"] = float(np.sqrt(np.mean(err**2)))
    if not known.all():
        out["abundance_rmse_pixels"] = "without the unknown phase"
    if "chi2" in maps:
        if unknown is not None and (unknown > 0.5).any() and (unknown <= 0.5).any():
            out["chi2_auc"] = roc_auc(detection_score({"chi2": maps["chi2"].reshape(-1, maps["chi2"].shape[-1])}),
                                      (unknown > 0.5).ravel())
    out["class_fractions"] = result.summary.recognizers[rec].class_fractions
    return out


def _eels_panels(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> list[Panel]:
    from scanlens.sim.eels import PHASES

    maps = result.maps[rec]
    panels = class_panels(truth["phase"], maps, list(PHASES), "phase") if "class" in maps else []
    err = np.sqrt(np.mean((maps["abundance"] - truth["abundance"]) ** 2, axis=-1))
    panels += [Panel("ground truth abundance (R,G,B = " + ", ".join(PHASES) + ")", truth["abundance"], kind="rgb"),
               Panel(f"recognized abundance ({rec})", maps["abundance"], kind="rgb"),
               Panel("abundance error (rms per pixel)", err, cmap="magma", vmin=0.0, vmax=max(0.1, float(err.max())))]
    if "chi2" in maps:
        unknown = truth.get("unknown")
        score = maps["chi2"].sum(axis=-1)  # the fit's detection score: chi2 of both windows
        panels.append(Panel("log10 χ² of the physics fit (cyan: true unknown phase)",
                            np.log10(np.maximum(score, 1e-3)), cmap="inferno",
                            contour=None if unknown is None else unknown > 0.5))
    return panels + pca_panels(snap, result)


def _eels_args(options: dict[str, Any]) -> list[str]:
    return ["--unknown-region"] if options.get("unknown_region") else []


# --------------------------------------------------------------------------- BE-PFM


def _bepfm_truth(path: Path) -> dict[str, Any]:
    from scanlens.sim.bepfm import load_ground_truth

    return load_ground_truth(path)


def _bepfm_score(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> dict[str, Any]:
    maps = result.maps[rec]
    return {"accuracy": float(np.mean(maps["class"] == truth["label"])),
            "class_fractions": result.summary.recognizers[rec].class_fractions}


def _bepfm_panels(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> list[Panel]:
    from scanlens.sim.bepfm import CLASSES

    panels = class_panels(truth["label"], result.maps[rec], list(CLASSES), "class")
    params = truth.get("params", {})
    for name in ("f0_kHz", "Q"):
        if name in params:
            panels.append(Panel(f"ground truth {name}", params[name], cmap="cividis"))
    return panels + pca_panels(snap, result)


# --------------------------------------------------------------------------- switching loops


def _loops_truth(path: Path) -> dict[str, Any]:
    from scanlens.sim.loops import load_ground_truth

    return load_ground_truth(path)


def _loops_score(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> dict[str, Any]:
    from scanlens.sim.loops import PARAMS

    pred = result.maps[rec]["parameters"]
    return {f"r2_{p}": r2(pred[..., k], truth["params"][p]) for k, p in enumerate(PARAMS)}


def _loops_panels(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> list[Panel]:
    from scanlens.sim.loops import PARAMS

    pred = result.maps[rec]["parameters"]
    panels = []
    for k, p in enumerate(PARAMS):
        t = truth["params"][p]
        lo, hi = float(t.min()), float(t.max())
        panels.append(Panel(f"ground truth {p}", t, cmap="viridis", vmin=lo, vmax=hi))
        panels.append(Panel(f"recognized {p} (live), R² {r2(pred[..., k], t):.3f}", pred[..., k], cmap="viridis",
                            vmin=lo, vmax=hi))
    if "uncertainty" in result.maps[rec]:
        panels.append(Panel("predicted σ of " + PARAMS[2], result.maps[rec]["uncertainty"][..., 2], cmap="magma"))
    return panels


# --------------------------------------------------------------------------- HAADF STEM movies


def _haadf_truth(path: Path) -> dict[str, Any]:
    from scanlens.sim.stem import load_ground_truth

    return load_ground_truth(path)


def _frame_truth(truth: dict[str, Any], i: int) -> tuple[np.ndarray, np.ndarray]:
    off = truth["atom_offsets"]
    atoms = truth["atoms"][off[i]:off[i + 1], :3]
    defects = truth["defects"][truth["defects"][:, 4] == i][:, :3]
    return atoms, defects


def _haadf_score(result, snap: ControlReply, truth: dict[str, Any], rec: str) -> dict[str, Any]:
    from scanlens.models.scoring import match_points

    frames = result.frames[rec]
    radius = 0.3 * truth["nn_spacing_px"]
    tp = fp = fn = 0
    d_tp = d_right = d_fn = d_fp = 0
    for i, arrays in frames.items():
        atoms, defects = _frame_truth(truth, i)
        a = match_points(arrays["atoms"], atoms, radius)
        tp, fp, fn = tp + a[0], fp + a[1], fn + a[2]
        found = arrays["defects"]
        m_tp, m_fp, m_fn, pairs = match_points(found, defects, truth["nn_spacing_px"] * 0.5)
        d_tp, d_fp, d_fn = d_tp + m_tp, d_fp + m_fp, d_fn + m_fn
        d_right += int(np.sum(found[pairs[:, 0], 2] == defects[pairs[:, 1], 2])) if m_tp else 0
    out: dict[str, Any] = {
        "frames": len(frames),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "defect_accuracy": d_right / max(d_tp, 1),
        "defect_recall": d_tp / max(d_tp + d_fn, 1),
        "defect_precision": d_tp / max(d_tp + d_fp, 1),
    }
    dyn = _haadf_dynamics(result, truth, rec)
    names = list(truth["defect_classes"])
    out["diffusion_px2_per_frame"] = dyn["est"]
    out["diffusion_stderr_px2_per_frame"] = dyn["se"]
    out["diffusion_true_px2_per_frame"] = dyn["true"]
    out["diffusion_rel_error"] = dyn["err"]
    out["diffusion_max_rel_error"] = max(dyn["err"].values()) if len(dyn["err"]) == len(names) else None
    tracking = result.summary.recognizers[rec].tracking or {}
    probs = (tracking.get("transitions") or {}).get("probabilities")
    if probs:
        est = np.array([[np.nan if v is None else v for v in row] for row in probs], float)
        err = np.abs(est - truth["transition_matrix"])
        out["transition_matrix"] = est.round(4).tolist()
        out["transition_max_abs_error"] = float(np.nanmax(err))
    out.update(_low_dose(rec))
    return out


def _low_dose(rec: str) -> dict[str, Any]:
    """The network against the classical baseline on the same held-out low-dose frames, measured now
    (in process, with the service's own FrameRecognizer code on the committed model)."""
    from scanlens.model_files import MODEL_DIR
    from scanlens.models.scoring import low_dose_comparison

    path = MODEL_DIR / f"{rec}.onnx"
    if not path.is_file():
        return {}
    r = low_dose_comparison(path)
    return {"low_dose": r["dose"], "low_dose_f1": r["atom_f1"], "low_dose_classical_f1": r["classical_atom_f1"],
            "low_dose_classical": "Laplacian-of-Gaussian peaks, threshold tuned at this dose on other frames"}


#: class-map colours of the segmentation: dark background, lattice columns, then the defects
SEG_COLORS = ["#111111", "#4c72b0", "#55a868", "#dd8452", "#c44e52", "#8172b3", "#da8bc3"]


def _haadf_dynamics(result, truth: dict[str, Any], rec: str) -> dict[str, dict[str, float]]:
    """Per defect class: the tracker's D (``est``) and standard error (``se``), the simulator's (``true``),
    all px²/frame, and the relative error (``err``), for the classes the tracker could estimate."""
    tracking = result.summary.recognizers[rec].tracking or {}
    classes = (tracking.get("diffusion") or {}).get("classes", {})
    names = list(truth["defect_classes"])
    out: dict[str, dict[str, float]] = {"est": {}, "se": {}, "err": {},
                                        "true": {n: float(v) for n, v in zip(names, truth["diffusion_px2"])}}
    for name in names:
        entry = classes.get(name)
        if entry and entry.get("D_px2_per_frame") is not None:
            true_d = out["true"][name]
            out["est"][name] = entry["D_px2_per_frame"]
            out["se"][name] = entry["D_stderr_px2_per_frame"]
            out["err"][name] = abs(entry["D_px2_per_frame"] - true_d) / true_d
    return out


def _haadf_panels(result, snap: ControlReply, truth: dict[str, Any], rec: str) -> list[Panel]:
    from scanlens.sim.stem import STEMMovie, SEG_CLASSES

    frames = result.frames[rec]
    first = min(frames)
    image = STEMMovie(truth["config"]).frame(first)
    arrays = frames[first]
    # a window of 12 lattice constants around the first found defect, where atoms can be told apart
    half = 6 * truth["nn_spacing_px"] * 3**0.5
    cx, cy = (arrays["defects"][0, :2] if len(arrays["defects"]) else np.array(image.shape[::-1]) / 2)
    cx = float(np.clip(cx, half, image.shape[1] - 1 - half))
    cy = float(np.clip(cy, half, image.shape[0] - 1 - half))
    win = (cx - half, cx + half, cy - half, cy + half)
    zoom = f" (zoom, {2 * half:.0f} px)"
    panels = [Panel(f"frame {first}", image, cmap="gray"),
              Panel(f"frame {first}" + zoom, image, cmap="gray", window=win),
              Panel("segmentation (live)" + zoom, arrays["classes"], kind="classes", labels=list(SEG_CLASSES),
                    colors=SEG_COLORS, window=win),
              Panel(f"found atoms ({len(arrays['atoms'])}) and defects ({len(arrays['defects'])})" + zoom, image,
                    cmap="gray", points=arrays["atoms"][:, :2], points2=arrays["defects"][:, :2], window=win)]
    tracks: dict[int, list[tuple[float, float]]] = {}
    for i in sorted(frames):
        for x, y, _, _, tid in frames[i]["defects"]:
            tracks.setdefault(int(tid), []).append((x, y))
    panels.append(Panel(f"defect trajectories ({len(tracks)} tracks, {len(frames)} frames)", image, cmap="gray",
                        paths=[np.array(t) for t in tracks.values() if len(t) > 1]))
    score = _haadf_dynamics(result, truth, rec)
    if score["est"]:
        names = list(truth["defect_classes"])
        est = np.array([score["est"].get(n, np.nan) for n in names])
        se = np.array([score["se"].get(n, 0.0) for n in names])
        true = np.array([score["true"][n] for n in names])
        panels.append(Panel("diffusion coefficient, px²/frame", np.stack([true, est]), kind="bars",
                            labels=["simulator", "estimated (± s.e.)"], xticks=[n.replace("_", "\n") for n in names],
                            errors=np.stack([np.zeros_like(se), se])))
    return panels


SCENARIOS: dict[str, Scenario] = {
    "eels": Scenario("eels", "eels-mlp", _eels_truth, _eels_score, _eels_panels, _eels_args),
    "bepfm": Scenario("bepfm", "bepfm-mlp", _bepfm_truth, _bepfm_score, _bepfm_panels),
    "loops": Scenario("loops", "loops-mlp", _loops_truth, _loops_score, _loops_panels, shape=(64, 64)),
    # 1024 px frames with 32 defects: sparse enough that walls and the defects' hard-core repulsion
    # hardly slow the walk, and enough hops in 100 frames for D to ~8 % (docs/performance.md#dynamics)
    "haadf": Scenario("haadf", "stem-unet", _haadf_truth, _haadf_score, _haadf_panels,
                      lambda options: ["--defects", str(options.get("defects") or 32)], shape=(1024, 1024),
                      imaging=True),
}

#: names people use for a recognizer, mapped to the model's name
ALIASES = {"physics-fit": "eels-fit", "fit": "eels-fit", "nn": "eels-mlp"}
