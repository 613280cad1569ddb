"""What the demo needs per modality: simulator arguments, ground truth, scores and figure panels.

Each scenario scores the live maps (as the subscriber assembled them, completed by the final
snapshot) against the ground truth the simulator saved, and lays out the PNG, in physical units: the
length of a pixel is the one the service echoed in ``scan_started`` (``scan_step`` of a spectral scan,
``pixel_size`` of a movie), else the simulator's config from the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scanlens.models.scoring import detection_score, roc_auc
from scanlens.client import ControlReply, ScanResult

from .figures import Panel, length_factor, unit_label

#: a movie streamed unpaced (``--frame-ms 0``) has no frame interval; its D in nm²/s is given at the
#: simulator's default frame period (``scanlens sim stem --frame-ms 40``), and the figure says so
NOMINAL_FRAME_S = 0.040


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
    ncols: int = 3  # panels per row of the figure


# --------------------------------------------------------------------------- shared pieces


def _length(size: Any, units: Any) -> tuple[float, str] | None:
    try:
        length_factor(str(units))
    except ValueError:
        return None
    return (float(size), str(units)) if size and float(size) > 0 else None


def pixel_length(result: ScanResult, truth: dict[str, Any]) -> tuple[float, str] | None:
    """The length of one pixel, (size, units): a spectral scan's ``scan_step`` or a movie's ``pixel_size``
    as the service echoed them in ``scan_started``; else the simulator's config (``pixel_size_nm`` /
    ``pixel_size_um``); None if neither says (the maps keep pixel axes)."""
    started = result.started
    for echoed in (getattr(started, "scan_step", None), getattr(started, "pixel_size", None)):
        if echoed is not None and (length := _length(echoed.size, echoed.units)) is not None:
            return length
    cfg = truth.get("config")
    for attr, units in (("pixel_size_nm", "nm"), ("pixel_size_um", "um")):
        if (value := getattr(cfg, attr, None)) is not None:
            return _length(value, units)
    return None


#: the quantity along a spectral axis, by its unit (PCA loadings are plotted against it)
AXIS_QUANTITY = {"eV": "energy loss", "keV": "energy loss", "kHz": "frequency", "Hz": "frequency", "V": "bias"}


def pca_score(result: ScanResult) -> dict[str, Any]:
    s = result.summary.recognizers.get("pca")
    return {"pca_explained_variance": [round(v, 5) for v in s.explained_variance_ratio]} if s else {}


def pca_panels(snapshot: ControlReply, result: ScanResult, pixel: tuple[float, str] | None = None) -> list[Panel]:
    """Two final score maps and the loadings, plotted against the scan's own axis (PCA resamples it)."""
    if "pca/scores" not in snapshot.arrays:
        return []
    scores = snapshot.arrays["pca/scores"]
    ratio = result.summary.recognizers["pca"].explained_variance_ratio
    panels = [Panel(f"PCA score {k + 1} ({100 * ratio[k]:.1f} % of variance)", scores[..., k], cmap="RdBu_r",
                    vmin=-np.abs(scores[..., k]).max(), vmax=np.abs(scores[..., k]).max(), pixel=pixel,
                    cbar_label=f"score {k + 1} (a.u.)") for k in range(2)]
    axis, components = result.started.axis, result.started.components
    loadings = snapshot.arrays["pca/loadings"][:3]
    what = ""
    if components:  # flattened [channels, components]: show the first component
        loadings = loadings.reshape(len(loadings), -1, len(components))[..., 0]
        what = f" ({components[0]})"
    x = np.linspace(axis.offset, axis.end, loadings.shape[1])
    quantity = AXIS_QUANTITY.get(axis.units, "signal axis")
    panels.append(Panel("PCA loadings" + what, loadings, kind="lines", x=x, xlabel=f"{quantity} ({axis.units})",
                        ylabel="loading (a.u.)", labels=[f"pc{k + 1}" for k in range(len(loadings))]))
    return panels


def class_panels(truth: np.ndarray, maps: dict[str, np.ndarray], labels: list[str], what: str,
                 pixel: tuple[float, str] | None = None) -> list[Panel]:
    return [Panel(f"ground truth {what}", truth, kind="classes", labels=labels, pixel=pixel),
            Panel(f"recognized {what} (live)", maps["class"], kind="classes", labels=labels,
                  marks=maps["class"] != truth, marks_label="misclassified", pixel=pixel),
            Panel("confidence", maps["confidence"], vmin=0.0, vmax=1.0, pixel=pixel, cbar_label="confidence (0–1)")]


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
    if "abundance" in maps:  # a model of the phase abundances (eels-fit; not every user model)
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
    px = pixel_length(result, truth)
    panels = class_panels(truth["phase"], maps, list(PHASES), "phase", px) if "class" in maps else []
    err = np.sqrt(np.mean((maps["abundance"] - truth["abundance"]) ** 2, axis=-1))
    panels += [Panel("ground truth abundance\n(R, G, B = " + ", ".join(PHASES) + ")", truth["abundance"], kind="rgb",
                     pixel=px),
               Panel(f"recognized abundance\n({rec}, live)", maps["abundance"], kind="rgb", pixel=px),
               Panel("abundance error (rms per pixel)", err, cmap="magma", vmin=0.0, vmax=max(0.1, float(err.max())),
                     pixel=px, cbar_label="rms abundance error (fraction, 0–1)")]
    if "chi2" in maps:
        unknown = truth.get("unknown")
        score = maps["chi2"].sum(axis=-1)  # the fit's detection score: chi2 of both windows
        panels.append(Panel("log10 χ² of the physics fit\n(cyan: true unknown phase)",
                            np.log10(np.maximum(score, 1e-3)), cmap="inferno",
                            contour=None if unknown is None else unknown > 0.5, pixel=px,
                            cbar_label="log10 reduced χ² (sum of both windows)"))
    return panels + pca_panels(snap, result, px)


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

    px = pixel_length(result, truth)
    panels = class_panels(truth["label"], result.maps[rec], list(CLASSES), "class", px)
    params = truth.get("params", {})
    for name, title, label in (("f0_kHz", "ground truth resonance frequency f₀", "f₀ (kHz)"),
                               ("Q", "ground truth quality factor Q", "Q (dimensionless)")):
        if name in params:
            panels.append(Panel(title, params[name], cmap="cividis", pixel=px, cbar_label=label))
    return panels + pca_panels(snap, result, px)


# --------------------------------------------------------------------------- switching loops


def _loops_truth(path: Path) -> dict[str, Any]:
    from scanlens.sim.loops import load_ground_truth

    return load_ground_truth(path)


def _loops_score(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> dict[str, Any]:
    from scanlens.sim.loops import PARAMS

    pred = result.maps[rec]["parameters"]
    return {f"r2_{p}": r2(pred[..., k], truth["params"][p]) for k, p in enumerate(PARAMS)}


#: how the loops parameters and their units are printed
LOOPS_SYMBOLS = {"J0": "J₀", "dJ": "δJ", "dh": "δh"}
UNIT_TEXT = {"k_BT": r"$k_\mathrm{B}T$"}


def _loops_panels(result: ScanResult, snap: ControlReply, truth: dict[str, Any], rec: str) -> list[Panel]:
    """Row by row: the true parameter maps, the recognized ones, their predicted σ (in the parameters' units)."""
    from scanlens.sim.loops import PARAM_UNITS, PARAMS

    px = pixel_length(result, truth)
    maps = result.maps[rec]
    pred = maps["parameters"]
    names = [LOOPS_SYMBOLS.get(p, p) for p in PARAMS]
    units = [UNIT_TEXT.get(u, u) for u in PARAM_UNITS]
    truths, recognized, sigmas = [], [], []
    for k, p in enumerate(PARAMS):
        t = truth["params"][p]
        lo, hi = float(t.min()), float(t.max())
        label = f"{names[k]} ({units[k]})"
        truths.append(Panel(f"ground truth {names[k]}", t, cmap="viridis", vmin=lo, vmax=hi, pixel=px,
                            cbar_label=label))
        recognized.append(Panel(f"recognized {names[k]} (live), R² {r2(pred[..., k], t):.3f}", pred[..., k],
                                cmap="viridis", vmin=lo, vmax=hi, pixel=px, cbar_label=label))
        if "uncertainty" in maps:
            sigmas.append(Panel(f"predicted σ of {names[k]}", maps["uncertainty"][..., k], cmap="magma", vmin=0.0,
                                pixel=px, cbar_label=f"σ({names[k]}) ({units[k]})"))
    return truths + recognized + sigmas


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
    # the same in physical units: nm²/s at the movie's frame interval (scan_start's, else the nominal one)
    out["frame_interval_s"], out["frame_interval_source"] = dyn["dt"], dyn["dt_source"]
    out["diffusion_nm2_per_s"] = dyn["est_s"]
    out["diffusion_stderr_nm2_per_s"] = dyn["se_s"]
    out["diffusion_true_nm2_per_s"] = dyn["true_s"]
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


def frame_interval(result) -> tuple[float, str]:
    """The movie's frame interval in seconds and where it came from: the ``frame_interval_s`` the service
    echoed in ``scan_started`` (the simulator sends ``--frame-ms`` / 1000 when it paces the movie), else
    :data:`NOMINAL_FRAME_S` (a movie streamed unpaced has none)."""
    dt = getattr(result.started, "frame_interval_s", None)
    if dt is not None and dt > 0:
        return float(dt), "scan_start"
    return NOMINAL_FRAME_S, "nominal (streamed unpaced)"


def _haadf_dynamics(result, truth: dict[str, Any], rec: str) -> dict[str, Any]:
    """Per defect class: the tracker's D (``est``) and standard error (``se``), the simulator's (``true``),
    all px²/frame, and the relative error (``err``), for the classes the tracker could estimate; the same
    D in nm²/s (``est_s``, ``se_s``, ``true_s``) at the frame interval ``dt`` (seconds, from ``dt_source``).
    The service's own nm²/s are taken where its summary has them (it had the interval), else converted
    from px²/frame with the movie's pixel size; the simulator's from its nm²/frame, with the same ``dt``."""
    tracking = result.summary.recognizers[rec].tracking or {}
    classes = (tracking.get("diffusion") or {}).get("classes", {})
    names = list(truth["defect_classes"])
    dt, source = frame_interval(result)
    px = pixel_length(result, truth)
    nm = px[0] * length_factor(px[1]) / 1e-9 if px is not None else float(truth["config"].pixel_size_nm)
    true_nm2 = truth.get("diffusion_nm2")
    if true_nm2 is None:
        true_nm2 = np.asarray(truth["diffusion_px2"], float) * float(truth["config"].pixel_size_nm) ** 2
    out: dict[str, Any] = {"est": {}, "se": {}, "err": {},
                           "true": {n: float(v) for n, v in zip(names, truth["diffusion_px2"])},
                           "est_s": {}, "se_s": {}, "true_s": {n: float(v) / dt for n, v in zip(names, true_nm2)},
                           "dt": dt, "dt_source": source}
    for name in names:
        entry = classes.get(name)
        if entry and entry.get("D_px2_per_frame") is not None:
            true_d = out["true"][name]
            out["est"][name] = entry["D_px2_per_frame"]
            out["se"][name] = entry["D_stderr_px2_per_frame"]
            out["err"][name] = abs(entry["D_px2_per_frame"] - true_d) / true_d
            for key, into in (("D", "est_s"), ("D_stderr", "se_s")):
                per_s = entry.get(f"{key}_nm2_per_s") if source == "scan_start" else None
                px2 = entry.get(f"{key}_px2_per_frame")
                out[into][name] = per_s if per_s is not None else (None if px2 is None else px2 * nm**2 / dt)
    return out


def _haadf_panels(result, snap: ControlReply, truth: dict[str, Any], rec: str) -> list[Panel]:
    from scanlens.sim.stem import STEMMovie, SEG_CLASSES

    frames = result.frames[rec]
    first = min(i for i, arrays in frames.items() if "classes" in arrays)  # the demo keeps the first frame's
    image = STEMMovie(truth["config"]).frame(first)
    arrays = frames[first]
    px = pixel_length(result, truth)
    counts = "HAADF intensity (counts)"
    # a window of 12 lattice constants around the first found defect, where atoms can be told apart
    half = 6 * truth["nn_spacing_px"] * 3**0.5
    cx, cy = (arrays["defects"][0, :2] if len(arrays["defects"]) else np.array(image.shape[::-1]) / 2)
    cx = float(np.clip(cx, half, image.shape[1] - 1 - half))
    cy = float(np.clip(cy, half, image.shape[0] - 1 - half))
    win = (cx - half, cx + half, cy - half, cy + half)
    zoom = (f" (zoom, {2 * half * px[0]:.2g} {unit_label(px[1])})" if px is not None
            else f" (zoom, {2 * half:.0f} px)")
    panels = [Panel(f"frame {first}", image, cmap="gray", pixel=px, cbar_label=counts),
              Panel(f"frame {first}" + zoom, image, cmap="gray", window=win, pixel=px, cbar_label=counts),
              Panel("segmentation (live)" + zoom, arrays["classes"], kind="classes", labels=list(SEG_CLASSES),
                    colors=SEG_COLORS, window=win, pixel=px),
              Panel(f"found atoms ({len(arrays['atoms'])}) and defects ({len(arrays['defects'])})\n" + zoom[1:], image,
                    cmap="gray", points=arrays["atoms"][:, :2], points2=arrays["defects"][:, :2], window=win,
                    pixel=px, cbar_label=counts)]
    tracks: dict[int, list[tuple[float, float]]] = {}
    for i in sorted(frames):
        for x, y, _, _, tid in frames[i]["defects"]:
            tracks.setdefault(int(tid), []).append((x, y))
    panels.append(Panel(f"defect trajectories\n({len(tracks)} tracks, {len(frames)} frames)", image, cmap="gray",
                        paths=[np.array(t) for t in tracks.values() if len(t) > 1], pixel=px, cbar_label=counts))
    score = _haadf_dynamics(result, truth, rec)
    names = list(truth["defect_classes"])
    ticks = [n.replace("_", "\n") for n in names]
    if score["est_s"]:
        est = np.array([np.nan if score["est_s"].get(n) is None else score["est_s"][n] for n in names])
        se = np.array([score["se_s"].get(n) or 0.0 for n in names])
        true = np.array([score["true_s"][n] for n in names])
        when = (f"frame interval {1e3 * score['dt']:g} ms" if score["dt_source"] == "scan_start"
                else f"streamed unpaced: at a nominal {1e3 * score['dt']:g} ms/frame")
        panels.append(Panel(f"diffusion coefficient D\n({when})", np.stack([true, est]), kind="bars",
                            labels=["simulator", "estimated (± s.e.)"], xticks=ticks, ylabel="D (nm²/s)",
                            errors=np.stack([np.zeros_like(se), se])))
    tracking = result.summary.recognizers[rec].tracking or {}
    probs = (tracking.get("transitions") or {}).get("probabilities")
    if probs:
        est_m = np.array([[np.nan if v is None else v for v in row] for row in probs], float)
        panels.append(Panel("class transitions per frame:\nestimated (simulator)", est_m, kind="matrix",
                            reference=np.asarray(truth["transition_matrix"], float), xticks=ticks, cmap="Blues",
                            vmin=0.0, vmax=1.0, xlabel="class at frame t + 1", ylabel="class at frame t",
                            cbar_label="probability (0–1)"))
    return panels


SCENARIOS: dict[str, Scenario] = {
    "eels": Scenario("eels", "eels-mlp", _eels_truth, _eels_score, _eels_panels, _eels_args),
    "bepfm": Scenario("bepfm", "bepfm-mlp", _bepfm_truth, _bepfm_score, _bepfm_panels),
    "loops": Scenario("loops", "loops-mlp", _loops_truth, _loops_score, _loops_panels, shape=(64, 64)),
    # 1024 px frames with 32 defects: sparse enough that walls and the defects' hard-core repulsion
    # hardly slow the walk, and enough hops in 100 frames for D to ~8 % (docs/performance.md#dynamics)
    "haadf": Scenario("haadf", "stem-unet", _haadf_truth, _haadf_score, _haadf_panels,
                      lambda options: ["--defects", str(options.get("defects") or 32)], shape=(1024, 1024),
                      imaging=True, ncols=4),
}

#: names people use for a recognizer, mapped to the model's name
ALIASES = {"physics-fit": "eels-fit", "fit": "eels-fit", "nn": "eels-mlp"}
