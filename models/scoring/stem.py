"""Scores of atom and defect finding in STEM frames, and the classical baseline they are compared with.

numpy/scipy only (no torch): usable by the tests, the training module and the demo alike.

* :func:`match_points`: optimal one-to-one matching of found to true positions within a radius;
  :func:`atom_scores` / :func:`atom_f1` and :func:`defect_accuracy` build on it;
* :func:`classical_atoms`: the classical detector a network has to beat — Laplacian-of-Gaussian
  blob detection at the probe's scale, local maxima at least ``min_distance_px`` apart above a
  threshold (tuned per dose by :func:`tune_classical`), sub-pixel refinement;
* :func:`evaluate_frame`: a recognizer (the service's ``FrameRecognizer``, or a path to the ONNX file)
  on one simulated frame, rescaled and post-processed exactly as the service does, scored against
  the simulator's ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from scanlens.sim.stem import STEMConfig, STEMMovie, nearest_neighbour_spacing_px
from scanlens.pipeline import FrameRecognizer, OnnxModel, PostProcess, open_recognizer, recognize_image, zoom_factor
from scanlens.protocol.messages import PixelSize

#: Match radius of atoms and defects as a fraction of the nearest-neighbour (metal-chalcogen) spacing.
MATCH_FRACTION = 0.3
#: Default classical threshold as a fraction of the brightest columns' response (about half the
#: relative brightness of the faintest column, an S2 pair at 0.148 of a W column).
CLASSICAL_FRACTION = 0.06
#: The low dose of the network-versus-classical comparison (expected counts at a W column) ...
LOW_DOSE = 12.0
#: ... its scored frames, and the frames that tune the classical threshold (seeds never trained on).
LOWDOSE_SEEDS = (4, 5)
TUNING_SEEDS = (900, 901)


class Segmenter(Protocol):
    """What :func:`evaluate_frame` needs of a recognizer (``FrameRecognizer`` has both)."""

    pp: PostProcess

    def segment(self, image: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- matching


def _xy(points: ArrayLike) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, 2))
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"points must be [n, >=2] (x, y, ...), got shape {p.shape}")
    return p[:, :2]


def match_points(found_xy: ArrayLike, true_xy: ArrayLike, radius: float) -> tuple[int, int, int, np.ndarray]:
    """Optimal one-to-one matching of found to true points no farther apart than ``radius``.

    Among all matchings it takes one with the most pairs and, among those, the smallest summed
    distance (``linear_sum_assignment`` on each connected cluster of the within-radius graph, so it
    stays fast for thousands of atoms). Only the first two columns (x, y) are used.

    Returns ``(tp, fp, fn, pairs)``: matched pairs, unmatched found, unmatched true points, and
    ``pairs`` int64 ``[tp, 2]`` (index into found, index into true), sorted by the found index.
    """
    f, t = _xy(found_xy), _xy(true_xy)
    nf, nt = len(f), len(t)
    if nf == 0 or nt == 0 or not radius > 0:
        return 0, nf, nt, np.zeros((0, 2), np.int64)
    neighbours = cKDTree(f).query_ball_tree(cKDTree(t), r=float(radius))
    fi = np.array([i for i, js in enumerate(neighbours) for _ in js], dtype=np.int64)
    ti = np.array([j for js in neighbours for j in js], dtype=np.int64)
    if fi.size == 0:
        return 0, nf, nt, np.zeros((0, 2), np.int64)
    dist = np.hypot(*(f[fi] - t[ti]).T)
    # Clusters of the bipartite graph (found nodes 0..nf-1, true nodes nf..nf+nt-1).
    graph = coo_matrix((np.ones(fi.size), (fi, ti + nf)), shape=(nf + nt, nf + nt))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[fi]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    pairs: list[tuple[int, int]] = []
    for group in np.split(order, bounds):
        gf, gt, gd = fi[group], ti[group], dist[group]
        if group.size == 1:
            pairs.append((int(gf[0]), int(gt[0])))
            continue
        uf, rf = np.unique(gf, return_inverse=True)
        ut, rt = np.unique(gt, return_inverse=True)
        big = 1.0 + float(gd.sum()) + float(radius) * group.size  # any non-edge costs more than all edges
        cost = np.full((uf.size, ut.size), big)
        cost[rf, rt] = gd
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < big
        pairs.extend((int(uf[r]), int(ut[c])) for r, c in zip(rows[ok], cols[ok]))
    arr = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    tp = len(arr)
    return tp, nf - tp, nt - tp, arr


def _f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def atom_scores(found_atoms: ArrayLike, true_atoms: ArrayLike, radius: float) -> dict[str, float]:
    """F1, precision, recall, mean position error (px) and class accuracy of matched atoms.

    Rows are ``(x, y[, class])``; the class accuracy (fraction of matched atoms whose third column
    agrees) is reported only when both sides carry a class.
    """
    found, true = np.asarray(found_atoms, np.float64), np.asarray(true_atoms, np.float64)
    tp, fp, fn, pairs = match_points(found, true, radius)
    out = {
        "f1": _f1(tp, fp, fn),
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "n_true": float(tp + fn),
        "n_found": float(tp + fp),
        "n_matched": float(tp),
        "position_error_px": float(np.mean(np.hypot(*(found[pairs[:, 0], :2] - true[pairs[:, 1], :2]).T)))
        if tp else float("nan"),
    }
    if tp and found.ndim == 2 and true.ndim == 2 and found.shape[1] >= 3 and true.shape[1] >= 3:
        out["class_accuracy"] = float(np.mean(found[pairs[:, 0], 2] == true[pairs[:, 1], 2]))
    return out


def atom_f1(found_atoms: ArrayLike, true_atoms: ArrayLike, radius: float) -> float:
    """F1 of atom finding: ``2 tp / (2 tp + fp + fn)`` with one-to-one matches within ``radius`` (1 if both empty)."""
    tp, fp, fn, _ = match_points(found_atoms, true_atoms, radius)
    return _f1(tp, fp, fn)


def defect_accuracy(found_defects: ArrayLike, true_defects: ArrayLike, radius: float) -> dict[str, float]:
    """Detection and classification of defects; rows ``(x, y, class, ...)`` on both sides.

    Found and true defects are matched by position only (within ``radius``); ``accuracy`` is the
    fraction of matched true defects whose found class is right (NaN when nothing matched),
    ``recall`` the fraction of true defects matched, ``precision`` the fraction of found defects
    matched, ``f1`` their harmonic mean, and ``correct_recall`` the fraction of true defects found
    with the right class.
    """
    found, true = np.asarray(found_defects, np.float64), np.asarray(true_defects, np.float64)
    tp, fp, fn, pairs = match_points(found, true, radius)
    right = int(np.sum(found[pairs[:, 0], 2] == true[pairs[:, 1], 2])) if tp else 0
    return {
        "accuracy": right / tp if tp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "f1": _f1(tp, fp, fn),
        "correct_recall": right / (tp + fn) if tp + fn else 1.0,
        "n_true": float(tp + fn),
        "n_found": float(tp + fp),
        "n_matched": float(tp),
    }


# --------------------------------------------------------------------------- classical baseline


def classical_atoms(
    image: ArrayLike,
    sigma_px: float,
    min_distance_px: float,
    threshold: float | None = None,
) -> np.ndarray:
    """Atom columns found classically: float32 ``[n, 2]`` (x, y) px, sub-pixel.

    Laplacian-of-Gaussian blob detection at the probe's scale: the response
    ``-sigma**2 * LoG_sigma(image)`` (``sigma_px`` = the probe's Gaussian sigma) is a band-pass that
    keeps spots of the probe's size and removes the background and the tails of neighbouring bright
    columns (which bury the faint S2 columns of WS2 under a plain Gaussian smoothing). Its local maxima
    at least ``min_distance_px`` apart (a square footprint of that edge) above the threshold are kept,
    except on the outermost row and column (a maximum there is a column centred outside the frame),
    and refined to sub-pixel by a parabola through the 3 x 3 neighbourhood along each axis.

    ``threshold`` is a fraction of the robust maximum of the response (its 99.9th percentile, the
    brightest columns; the background responds ~0); ``None`` uses :data:`CLASSICAL_FRACTION`, about half
    the relative brightness of the faintest column in WS2. :func:`tune_classical` tunes it per dose.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    sigma = max(float(sigma_px), 0.5)
    s = -ndimage.gaussian_laplace(img, sigma=sigma, mode="reflect") * sigma**2
    hi = float(np.percentile(s, 99.9))
    frac = CLASSICAL_FRACTION if threshold is None else float(threshold)
    size = max(3, int(round(min_distance_px)) | 1)
    peaks = (s == ndimage.maximum_filter(s, size=size, mode="nearest")) & (s > frac * hi)
    peaks[[0, -1], :] = False
    peaks[:, [0, -1]] = False
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return np.zeros((0, 2), np.float32)
    c = s[ys, xs]

    def vertex(minus: np.ndarray, plus: np.ndarray) -> np.ndarray:
        den = minus - 2.0 * c + plus
        safe = np.where(den < 0, den, -1.0)
        return np.clip(np.where(den < 0, 0.5 * (minus - plus) / safe, 0.0), -0.5, 0.5)

    x = xs + vertex(s[ys, xs - 1], s[ys, xs + 1])
    y = ys + vertex(s[ys - 1, xs], s[ys + 1, xs])
    return np.column_stack([x, y]).astype(np.float32)


def classical_for(cfg: STEMConfig) -> dict[str, float]:
    """The classical detector's geometric parameters for a simulated frame: probe sigma and 0.6 x nn spacing."""
    return {"sigma_px": cfg.sigma_px, "min_distance_px": 0.6 * nearest_neighbour_spacing_px(cfg)}


def tune_classical(
    images: Sequence[np.ndarray],
    truths: Sequence[Mapping[str, np.ndarray]],
    cfg: STEMConfig,
    fractions: Sequence[float] = tuple(np.round(np.arange(0.005, 0.2001, 0.005), 3)),
) -> tuple[float, float]:
    """The threshold fraction with the best mean atom F1 on tuning frames (not the frames scored later).

    Returns ``(fraction, mean F1)``; geometry from :func:`classical_for`.
    """
    geo = classical_for(cfg)
    radius = MATCH_FRACTION * nearest_neighbour_spacing_px(cfg)
    best = (float(fractions[0]), -1.0)
    for f in fractions:
        score = float(np.mean([atom_f1(classical_atoms(im, threshold=float(f), **geo), t["atoms"], radius)
                               for im, t in zip(images, truths)]))
        if score > best[1]:
            best = (float(f), score)
    return best


def classical_scores(image: np.ndarray, truth: Mapping[str, np.ndarray], cfg: STEMConfig,
                     threshold: float | None = None) -> dict[str, float]:
    """:func:`atom_scores` of :func:`classical_atoms` on one simulated frame (match radius 0.3 x nn)."""
    found = classical_atoms(image, threshold=threshold, **classical_for(cfg))
    return atom_scores(found, np.asarray(truth["atoms"])[:, :2], MATCH_FRACTION * nearest_neighbour_spacing_px(cfg))


# --------------------------------------------------------------------------- the network, as the service runs it


Recognizable = Segmenter | ort.InferenceSession | str | PathLike[str]


def _open(recognizer: Recognizable) -> Any:
    """A FrameRecognizer for a path or an ONNX Runtime session (its card read from the session's metadata)."""
    if isinstance(recognizer, (str, Path, PathLike)):
        return open_recognizer(Path(recognizer), threads=2)
    if isinstance(recognizer, ort.InferenceSession):
        return FrameRecognizer(OnnxModel.from_session(recognizer))
    return recognizer


def recognize_frame(recognizer: Recognizable, image: np.ndarray,
                    pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """(atoms ``[n, 3]``, defects ``[m, 4]``) in the frame's own pixels, computed by the service's own
    ``recognize_image``: zoom (``zoom_factor``, order 1) to the card's pixel size, segment, post-process,
    scale back. A recognizer without a ``pixel_size`` sees the frame unscaled."""
    rec = _open(recognizer)
    model_px = getattr(rec, "pixel_size", None)
    zoom = 1.0 if model_px is None else zoom_factor(PixelSize(size=pixel_size_nm, units="nm"), model_px)
    _, atoms, defects = recognize_image(rec.segment, rec.pp, image, zoom)
    return atoms, defects


def evaluate_frame(recognizer: Recognizable, image: np.ndarray,
                   truth: Mapping[str, np.ndarray], cfg: STEMConfig) -> dict[str, float]:
    """Run the recognizer on one simulated frame (at ``cfg.pixel_size_nm``) as the service does and score it.

    ``recognizer``: a ``FrameRecognizer`` (``scanlens.pipeline.open_recognizer``), any object
    with its ``segment``, ``pp`` (and ``pixel_size``), an ONNX Runtime session of an image model, or
    the path of an ONNX file (opened anew on every call). Atoms and defects
    match within 0.3 x the nearest-neighbour spacing. Keys: ``atom_f1``, ``atom_precision``,
    ``atom_recall``, ``atom_position_error_px``, ``atom_class_accuracy``, ``defect_accuracy``,
    ``defect_recall``, ``defect_precision``, ``defect_f1``, ``defect_correct_recall`` and counts.
    """
    atoms, defects = recognize_frame(recognizer, image, cfg.pixel_size_nm)
    radius = MATCH_FRACTION * nearest_neighbour_spacing_px(cfg)
    a = atom_scores(atoms, truth["atoms"], radius)
    d = defect_accuracy(defects, truth["defects"], radius)
    out = {f"atom_{k}": v for k, v in a.items()}
    out.update({f"defect_{k}" if k != "accuracy" else "defect_accuracy": v for k, v in d.items()})
    return out


def pooled(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Scores of several :func:`evaluate_frame` results pooled over all their atoms and defects:
    atom and defect F1, recall and precision, and the defect classification accuracy."""
    out: dict[str, float] = {}
    if not results:
        return out
    for side in ("atom", "defect"):
        tp = sum(r[f"{side}_n_matched"] for r in results)
        fp = sum(r[f"{side}_n_found"] for r in results) - tp
        fn = sum(r[f"{side}_n_true"] for r in results) - tp
        out[f"{side}_f1"] = _f1(int(tp), int(fp), int(fn))
        out[f"{side}_recall"] = tp / (tp + fn) if tp + fn else 1.0
        out[f"{side}_precision"] = tp / (tp + fp) if tp + fp else 1.0
    matched = sum(r["defect_n_matched"] for r in results)
    right = sum(r["defect_accuracy"] * r["defect_n_matched"] for r in results if r["defect_n_matched"])
    out["defect_accuracy"] = right / matched if matched else math.nan
    return out


# --------------------------------------------------------------------------- held-out frames and the low-dose comparison


def simulated_frame(seed: int, *, size: int = 512, dose: float | None = None,
                    pixel_size_nm: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], STEMConfig]:
    """(image, truth, config) of frame 0 of a default-condition movie (optionally another dose / pixel size)."""
    base = STEMConfig()
    cfg = STEMConfig(size=size, seed=seed, frames=1, dose=base.dose if dose is None else dose,
                     pixel_size_nm=base.pixel_size_nm if pixel_size_nm is None else pixel_size_nm,
                     n_defects=base.n_defects if size >= 384 else 4 if size >= 192 else 0)
    movie = STEMMovie(cfg)
    return movie.frame(0), movie.truth(0), cfg


def low_dose_comparison(recognizer: Recognizable, *, dose: float = LOW_DOSE, seeds: Sequence[int] = LOWDOSE_SEEDS,
                        tuning_seeds: Sequence[int] = TUNING_SEEDS, size: int = 512) -> dict[str, float]:
    """Atom F1 of the network and of the classical baseline on the same low-dose frames, in one run.

    The classical threshold is tuned at this dose on the ``tuning_seeds`` frames (its best case), then
    both detectors score the ``seeds`` frames. Keys: ``dose``, ``atom_f1`` (network, pooled),
    ``classical_atom_f1`` (mean per frame), ``classical_threshold_fraction``, ``frames``.
    """
    tune = [simulated_frame(s, size=size, dose=dose) for s in tuning_seeds]
    frac, _ = tune_classical([f[0] for f in tune], [f[1] for f in tune], tune[0][2])
    low = [simulated_frame(s, size=size, dose=dose) for s in seeds]
    rec = _open(recognizer)
    net = pooled([evaluate_frame(rec, *f) for f in low])
    classical = [classical_scores(img, truth, cfg, threshold=frac) for img, truth, cfg in low]
    return {"dose": float(dose), "atom_f1": float(net["atom_f1"]),
            "classical_atom_f1": float(np.mean([c["f1"] for c in classical])),
            "classical_threshold_fraction": float(frac), "frames": len(low)}
