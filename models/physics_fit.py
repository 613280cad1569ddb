"""Build "eels-fit": the seed's classical EELS physics fit as a fixed ONNX graph (no training).

Each spectrum ``y`` (raw counts on :data:`MODEL_AXIS`) is modelled as a linear mixture of the known
reference spectra, ``y = sum_i c_i w_i + noise`` (``w_i`` from :func:`instrument_sim.eels.reference_spectra`
on the model axis, times its 0.5 eV dispersion), and the graph reports per pixel:

* ``coefficients`` ``[n, 3]``: the weighted linear least-squares coefficients ``c_i``, fitted jointly
  over both windows (5-125 eV). The weights are the inverse of the expected Poisson variance shape,
  ``1 / mean_i w_i(E)`` — the best linear unbiased estimator when counting noise dominates, and
  independent of the dose. The fit is one MatMul by the precomputed weighted pseudo-inverse ``P``
  (``c = y P``, ``P = W R^T (R W R^T)^-1``). Units: counts per model channel per unit reference,
  i.e. the dose times (incoming dispersion / 0.5 eV).
* ``abundance`` ``[n, 3]``: ``max(c_i, 0) + eps`` normalised to sum 1 (non-negativity by clipping;
  ``eps`` = 1e-6 makes an empty spectrum 1/3 each). Only the shape of the spectrum matters, so dose
  and dispersion cancel. On a pixel holding a phase outside the reference set these are the known
  phases' shares of the best (wrong) explanation; the chi2 map says when not to trust them.
* ``chi2`` ``[n, 2]``: reduced chi-square per window ("plasmons" 5-35 eV, "chemistry" 35-125 eV) of the
  joint fit, ``sum_k r_k**2 / (max(yhat_k, 1) + READ_NOISE**2) / dof``, with ``r = y - yhat`` and
  ``dof`` = the window's channels minus its share of the fitted parameters (the trace of the weighted
  hat matrix over the window), so a correct model gives 1 on average. The Poisson term uses the
  *fitted* counts, which after the service's axis mapping are counts per incoming channel: data and
  variance scale together, so chi2 does not depend on the instrument's dispersion or dose. Linear
  interpolation between incoming channels (an axis not aligned with the model's) averages neighbours
  and lowers the variance by a factor 0.5-1, so a perfect fit then reads 0.5-1 instead of 1: chi2
  never *over*-states a misfit. READ_NOISE is fixed at 3 counts rms (the simulated detector's).
* ``residual`` ``[n, 2]``: rms of ``r`` per window relative to the mean measured counts of that window
  (floored at 1 count).
* ``novelty`` ``[n]``: how unlike the simulated training spectra a spectrum is, as eels-mlp measures it
  (``models/novelty.py``; docs/protocol.md §4.2): the features ``f = 2 sqrt(max(counts, 0) + 3/8)`` on the
  model axis (variance-stabilised counts, as ``scanlens.models.eels.novelty_features``), and
  ``mean_j ((f - m - B B^T (f - m))_j**2 / v_j)`` with the mean ``m``, the top
  :data:`NOVELTY_COMPONENTS` principal directions ``B`` and the per-channel residual variance ``v``
  fitted in numpy (:func:`scanlens.models.novelty.fit_subspace`) on simulated training-like spectra
  (randomised scans and random mixtures of ``scanlens.models.eels``'s data functions, mapped onto the
  model axis). Dimensionless; the card's ``novelty.threshold`` is its 0.995 quantile on held-out
  training-like spectra, and the card records the flagged fractions on the held-out scan and on foreign
  data (flat Poisson noise, another instrument's spectra, the unknown phase LAO). chi2 alone does not
  tell flat noise from a known phase; the novelty score does.

The detection score for spectra that are not in the reference set is ``chi2`` summed over both
windows (:func:`detection_score`). :func:`fit_numpy` is the independent reference (``np.linalg.lstsq``
in float64, and the novelty score in float64 from the same constants); :func:`build` fits the novelty
subspace, writes the ONNX file with its model card, checks ONNX Runtime against the reference and
measures the metrics on a held-out simulated scan. Importing this module needs numpy and onnx only;
:func:`build` also imports ``scanlens.models.eels`` for its training data (the ``train`` extra, torch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanlens.sim.eels import PHASES, UNKNOWN_PHASE, EELSConfig, EELSSample, axis_energies, reference_spectra
from scanlens.models.export import ProgressFn, TrainProgress, emit, make_session, set_card
from scanlens.models.scoring import detection_score, roc_auc  # noqa: F401  (re-exported: the fit's own scores)
from scanlens.models.subspace import COUNTS_FLOOR_WEIGHT, Subspace
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import InputSpec, ModelCard, NoveltySpec, OutputSpec

if TYPE_CHECKING:
    from scanlens.models.novelty import SubspaceFit

log = logging.getLogger(__name__)

NAME = "eels-fit"
VERSION = "1"
#: The same axis as eels-mlp, so both recognizers can run on one scan.
MODEL_AXIS = Axis(size=240, offset=5.0, scale=0.5, units="eV")
INPUT_NAME = "spectra"
OUTPUT_NAMES: tuple[str, ...] = ("abundance", "chi2", "residual", "coefficients", "novelty")
#: The seed's two fit windows, [low, high) in eV.
WINDOWS: dict[str, tuple[float, float]] = {"plasmons": (5.0, 35.0), "chemistry": (35.0, 125.0)}
#: Read noise assumed in the chi2 variance, counts rms per (incoming) channel.
READ_NOISE = 3.0
#: Floor of the Poisson variance and of the mean signal, counts.
MIN_COUNTS = 1.0
#: Added to every clipped coefficient before normalising to abundances.
EPS = 1e-6
HELDOUT_SEED = 999
#: A pixel counts as "unknown" for the ROC metric when the unknown phase's abundance exceeds this.
UNKNOWN_THRESHOLD = 0.5
#: Pixels with less unknown phase than this are scored for abundances.
KNOWN_BELOW = 0.01
OPSET = 17
#: Largest accepted ONNX Runtime vs numpy difference: absolute for abundances, relative for the rest
#: (float32 graph against float64 lstsq).
PARITY_TOL = 1e-4
NORMALIZATION = (
    "none: raw counts enter the least-squares projection directly; the fit is linear, and abundances "
    "are the clipped coefficients normalised to sum 1, so dose and dispersion cancel"
)
ARCHITECTURE = "linear least squares (ONNX MatMul)"
#: The novelty score's subspace dimension and features: eels-mlp's (``scanlens.models.eels``).
NOVELTY_COMPONENTS = 12
NOVELTY_FEATURES = "2 sqrt(counts + 3/8) on the model axis (variance-stabilised counts)"
#: Seed of the novelty data (the scans' seeds follow ``scanlens.models.eels``: 1000+ to fit, 1050+ held out).
NOVELTY_SEED = 0
#: Training-like spectra the subspace is fitted on: randomised scans (a ``NOVELTY_SCAN_KEEP`` share of their
#: pure pixels, every mixed one) and random pure / binary / ternary mixtures.
NOVELTY_SCANS = 4
NOVELTY_SCAN_KEEP = 0.35
NOVELTY_MIXTURES = 40_000
#: Held-out training-like spectra the threshold is set on: whole randomised scans and random mixtures.
NOVELTY_HELDOUT_SCANS = 2
NOVELTY_HELDOUT_MIXTURES = 40_000
#: Largest accepted ONNX Runtime vs numpy difference of the novelty score, relative (floored at 1).
NOVELTY_PARITY_TOL = 1e-4


# --------------------------------------------------------------------------- the fixed linear algebra


def references(axis: Axis = MODEL_AXIS) -> np.ndarray:
    """Known reference spectra as counts per channel of ``axis`` per unit dose: ``[3, axis.size]`` float64."""
    return reference_spectra(axis_energies(axis)) * axis.scale


def window_masks(axis: Axis = MODEL_AXIS) -> np.ndarray:
    """Boolean ``[len(WINDOWS), axis.size]``: which channels belong to each fit window."""
    e = axis_energies(axis)
    return np.stack([(e >= lo) & (e < hi) for lo, hi in WINDOWS.values()])


def fit_weights(axis: Axis = MODEL_AXIS) -> np.ndarray:
    """Per-channel least-squares weights ``1 / mean_i w_i`` (inverse Poisson variance shape), mean 1."""
    w = 1.0 / references(axis).mean(axis=0)
    return w / w.mean()


def projection(axis: Axis = MODEL_AXIS) -> np.ndarray:
    """``P`` ``[axis.size, 3]`` with ``coefficients = spectra @ P`` (weighted pseudo-inverse), float64."""
    sw = np.sqrt(fit_weights(axis))
    return (np.linalg.pinv((references(axis) * sw).T) * sw).T


def degrees_of_freedom(axis: Axis = MODEL_AXIS) -> np.ndarray:
    """Per window: channels minus the trace of the weighted hat matrix over them, ``[len(WINDOWS)]``."""
    hat = np.diag(projection(axis) @ references(axis))  # yhat = y @ (P R); expected r^2/var = 1 - H_cc
    return np.array([np.sum(1.0 - hat[m]) for m in window_masks(axis)])


def _post(y: np.ndarray, c: np.ndarray, refs: np.ndarray, masks: np.ndarray, dof: np.ndarray) -> dict[str, np.ndarray]:
    """Abundances, chi2 and residuals from coefficients (float64), exactly as the graph computes them."""
    yhat = c @ refs
    r2 = (y - yhat) ** 2
    z = r2 / (np.maximum(yhat, MIN_COUNTS) + READ_NOISE**2)
    m = masks.T.astype(np.float64)  # [C, W]
    chi2 = (z @ m) / dof
    n_ch = masks.sum(axis=1)
    residual = np.sqrt((r2 @ m) / n_ch) / np.maximum((y @ m) / n_ch, MIN_COUNTS)
    cp = np.maximum(c, 0.0) + EPS
    return {
        "abundance": cp / cp.sum(axis=1, keepdims=True),
        "chi2": chi2,
        "residual": residual,
        "coefficients": c,
    }


@dataclass(frozen=True)
class NoveltyConstants:
    """The novelty score's fitted constants (float64): the training features' ``mean`` ``[240]``, the principal
    directions ``basis`` ``[240, k]`` and the per-channel residual variance ``residual_var`` ``[240]``, in
    units of the features (``2 sqrt(counts + 3/8)``) and their square."""

    mean: np.ndarray
    basis: np.ndarray
    residual_var: np.ndarray
    counts_floor: float  # mean counts per channel below which the score grows (models/novelty.py)

    @classmethod
    def of(cls, subspace) -> NoveltyConstants:
        """From a fitted ``scanlens.models.novelty.Subspace`` (or anything with these arrays and a counts floor)."""
        return cls(*(np.asarray(getattr(subspace, k), np.float64) for k in ("mean", "basis", "residual_var")),
                   float(subspace.counts_floor))


def novelty_features(spectra: np.ndarray) -> np.ndarray:
    """Variance-stabilised counts ``2 sqrt(max(counts, 0) + 3/8)`` in float64 (``[n, 240]`` counts on the model
    axis): Poisson noise weighs about 1 in every channel at every dose; eels-mlp's features
    (``scanlens.models.eels.novelty_features``)."""
    return 2.0 * np.sqrt(np.clip(np.asarray(spectra, np.float64), 0.0, None) + 0.375)


def novelty_numpy(spectra: np.ndarray, novelty: NoveltyConstants) -> np.ndarray:
    """The novelty score of each spectrum (``[n, 240]`` counts on the model axis) in float64, ``[n]``,
    dimensionless: the mean over channels of the squared distance of :func:`novelty_features` from the
    fitted subspace, in units of the training residual variance, plus the counts floor's term
    (``models/novelty.py``)."""
    sub = Subspace(novelty.mean, novelty.basis, novelty.residual_var, 0, novelty.counts_floor)
    return sub.scores(novelty_features(spectra))


def fit_numpy(spectra: np.ndarray, novelty: NoveltyConstants | None = None) -> dict[str, np.ndarray]:
    """The reference implementation in float64 with ``np.linalg.lstsq``: ``[n, 240]`` counts on
    :data:`MODEL_AXIS` -> ``abundance``, ``chi2``, ``residual``, ``coefficients`` (see the module doc), and
    ``novelty`` (:func:`novelty_numpy`) when the novelty constants are given (a built graph's:
    :func:`graph_novelty`)."""
    y = np.asarray(spectra, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != MODEL_AXIS.size:
        raise ValueError(f"spectra must be [n, {MODEL_AXIS.size}], got {y.shape}")
    refs = references()
    sw = np.sqrt(fit_weights())
    c = np.linalg.lstsq((refs * sw).T, (y * sw).T, rcond=None)[0].T
    out = _post(y, c, refs, window_masks(), degrees_of_freedom())
    if novelty is not None:
        out["novelty"] = novelty_numpy(y, novelty)
    return out


# --------------------------------------------------------------------------- the ONNX graph


def _graph_proto(novelty: NoveltyConstants) -> onnx.ModelProto:
    """The fit and the novelty score (with these constants) as an ONNX model (opset 17, float32 constants),
    without the card."""
    masks = window_masks().T.astype(np.float64)  # [C, W]
    n_win = masks.shape[1]
    consts = {
        "projection": projection(),
        "references": references(),
        "chi2_weights": masks / degrees_of_freedom(),
        "mean_weights": masks / masks.sum(axis=0),
        "min_counts": np.array(MIN_COUNTS),
        "read_var": np.array(READ_NOISE**2),
        "zero": np.array(0.0),
        "eps": np.array(EPS),
        # novelty: features 2 sqrt(max(y, 0) + 3/8), then the mean of the weighted squared residual off the
        # subspace as one MatMul by 1 / (residual_var * channels)
        "novelty_offset": np.array(0.375),
        "two": np.array(2.0),
        "novelty_mean": novelty.mean,
        "novelty_basis": novelty.basis,
        "novelty_basis_t": novelty.basis.T,
        "novelty_weights": 1.0 / (novelty.residual_var * MODEL_AXIS.size),
        # counts floor: COUNTS_FLOOR_WEIGHT * relu(ln(floor) - ln(max(mean counts, 1e-3)))
        "novelty_log_floor": np.array(math.log(novelty.counts_floor)),
        "novelty_floor_weight": np.array(COUNTS_FLOOR_WEIGHT),
        "novelty_min_mean": np.array(1e-3),
    }
    init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    init.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    node = helper.make_node
    nodes = [
        node("MatMul", [INPUT_NAME, "projection"], ["coefficients"]),
        node("MatMul", ["coefficients", "references"], ["fitted"]),
        node("Sub", [INPUT_NAME, "fitted"], ["resid"]),
        node("Mul", ["resid", "resid"], ["resid2"]),
        node("Max", ["fitted", "min_counts"], ["poisson_var"]),
        node("Add", ["poisson_var", "read_var"], ["variance"]),
        node("Div", ["resid2", "variance"], ["z2"]),
        node("MatMul", ["z2", "chi2_weights"], ["chi2"]),
        node("MatMul", ["resid2", "mean_weights"], ["mean_resid2"]),
        node("Sqrt", ["mean_resid2"], ["rms_resid"]),
        node("MatMul", [INPUT_NAME, "mean_weights"], ["mean_signal"]),
        node("Max", ["mean_signal", "min_counts"], ["signal"]),
        node("Div", ["rms_resid", "signal"], ["residual"]),
        node("Max", ["coefficients", "zero"], ["clipped"]),
        node("Add", ["clipped", "eps"], ["positive"]),
        node("ReduceSum", ["positive", "axis1"], ["total"], keepdims=1),
        node("Div", ["positive", "total"], ["abundance"]),
        node("Max", [INPUT_NAME, "zero"], ["nonnegative"]),
        node("Add", ["nonnegative", "novelty_offset"], ["shifted"]),
        node("Sqrt", ["shifted"], ["root"]),
        node("Mul", ["root", "two"], ["features"]),
        node("Sub", ["features", "novelty_mean"], ["centred"]),
        node("MatMul", ["centred", "novelty_basis"], ["loadings"]),
        node("MatMul", ["loadings", "novelty_basis_t"], ["in_subspace"]),
        node("Sub", ["centred", "in_subspace"], ["off_subspace"]),
        node("Mul", ["off_subspace", "off_subspace"], ["off2"]),
        node("MatMul", ["off2", "novelty_weights"], ["off_score"]),  # [n, C] @ [C] -> [n]
        node("ReduceMean", ["nonnegative"], ["mean_counts"], axes=[1], keepdims=0),  # opset 17: axes attribute
        node("Max", ["mean_counts", "novelty_min_mean"], ["dim_counts"]),
        node("Log", ["dim_counts"], ["log_counts"]),
        node("Sub", ["novelty_log_floor", "log_counts"], ["below_floor"]),
        node("Relu", ["below_floor"], ["floor_gap"]),
        node("Mul", ["floor_gap", "novelty_floor_weight"], ["floor_term"]),
        node("Add", ["off_score", "floor_term"], ["novelty"]),
    ]
    k = len(PHASES)
    outputs = [
        helper.make_tensor_value_info("abundance", TensorProto.FLOAT, ["n", k]),
        helper.make_tensor_value_info("chi2", TensorProto.FLOAT, ["n", n_win]),
        helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["n", n_win]),
        helper.make_tensor_value_info("coefficients", TensorProto.FLOAT, ["n", k]),
        helper.make_tensor_value_info("novelty", TensorProto.FLOAT, ["n"]),
    ]
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", MODEL_AXIS.size])],
        outputs,
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanlens")
    model.ir_version = 8
    return model


def graph_novelty(model: str | PathLike[str] | onnx.ModelProto) -> NoveltyConstants:
    """The novelty constants stored in an eels-fit graph (file or proto), float64 from the float32 initializers."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    return NoveltyConstants(init["novelty_mean"], init["novelty_basis"],
                            1.0 / (init["novelty_weights"] * MODEL_AXIS.size),
                            float(np.exp(init["novelty_log_floor"])))


def model_card(metrics: Mapping[str, float], novelty: NoveltySpec, novelty_training: Mapping[str, Any]) -> ModelCard:
    """The card stored in the ONNX file's metadata: ``novelty`` is the fitted score's section (threshold and
    figures), ``novelty_training`` how its data were made (under ``training["novelty"]``)."""
    from scanlens.models.novelty import novelty_output

    windows = list(WINDOWS)
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality="eels",
        description=(
            "Classical physics fit of EELS spectrum images of STO / LSMO / BFO heterostructures: "
            "weighted linear least squares on the known reference spectra over 5-125 eV, giving "
            "abundances, and reduced chi2 and relative rms residual per window (plasmons 5-35 eV, "
            "chemistry 35-125 eV); a high chi2 marks a spectrum outside the reference set, a high "
            "novelty score (per pixel) a spectrum unlike the simulated training spectra (noise, another "
            "instrument, an unknown phase)."
        ),
        architecture=ARCHITECTURE,
        input=InputSpec(name=INPUT_NAME, axis=MODEL_AXIS, normalization=NORMALIZATION),
        outputs=[
            OutputSpec(
                name="abundance",
                role="parameters",
                labels=list(PHASES),
                units=["fraction"] * len(PHASES),
                description="least-squares coefficients clipped at 0 and normalised to sum 1",
            ),
            OutputSpec(
                name="chi2",
                role="parameters",
                labels=windows,
                units=["1"] * len(windows),
                description=(
                    f"reduced chi2 per window, variance max(fitted, 1) + {READ_NOISE:g}**2 counts; ~1 for "
                    "a spectrum in the reference set (0.5-1 on interpolated axes); their sum is the "
                    "unknown-phase score"
                ),
            ),
            OutputSpec(
                name="residual",
                role="parameters",
                labels=windows,
                units=["1"] * len(windows),
                description="rms residual per window / mean counts of the window",
            ),
            OutputSpec(
                name="coefficients",
                role="parameters",
                labels=list(PHASES),
                units=["counts"] * len(PHASES),
                description="raw least-squares coefficients: dose x (incoming dispersion / 0.5 eV) per phase",
            ),
            novelty_output(
                f"mean over the {MODEL_AXIS.size} channels of the squared distance of 2 sqrt(counts + 3/8) from "
                f"the {NOVELTY_COMPONENTS}-dimensional principal subspace of simulated training spectra, in units "
                "of the training residual variance (dimensionless); novel above novelty.threshold"
            ),
        ],
        training={
            "generator": "none: reference spectra from instrument_sim.eels",
            "method": (
                "joint weighted linear least squares over both windows, weights 1 / mean reference "
                "(Poisson variance shape); coefficients = spectra @ weighted pseudo-inverse"
            ),
            "windows_eV": {k: list(v) for k, v in WINDOWS.items()},
            "read_noise": READ_NOISE,
            "detection_score": "chi2[plasmons] + chi2[chemistry]",
            "heldout_seed": HELDOUT_SEED,
            "heldout_unknown_phase": UNKNOWN_PHASE,
            "unknown_threshold": UNKNOWN_THRESHOLD,
            "resampling": "service AxisMap (linear interpolation) from the simulator's axis",
            "novelty": dict(novelty_training),
        },
        metrics=dict(metrics),
        novelty=novelty,
    )


# --------------------------------------------------------------------------- evaluation and build


def scan_spectra(sample: EELSSample, axis: Axis = MODEL_AXIS) -> np.ndarray:
    """Every line of ``sample`` mapped onto ``axis`` as the service does: ``[rows * cols, axis.size]`` float32."""
    amap = AxisMap.build(sample.cfg.axis, axis)
    return np.concatenate([amap.apply(sample.line(r)) for r in range(sample.cfg.rows)])


def evaluate(outputs: Mapping[str, np.ndarray], sample: EELSSample) -> dict[str, float]:
    """Metrics of fit outputs against a scan's ground truth.

    Always ``abundance_rmse`` and ``phase_accuracy`` (argmax of the abundances) over the pixels with
    less than :data:`KNOWN_BELOW` of the unknown phase (all of them when the region is off), against the
    known phases' shares ``abundance / abundance.sum(-1)``, and the median chi2 of those pixels; with an
    unknown region also ``chi2_auc``: ROC AUC of :func:`detection_score` for unknown abundance > 0.5, and
    ``novelty_auc``, the same for the ``novelty`` score when the outputs have it.
    """
    k = len(PHASES)
    unknown = sample.unknown.reshape(-1)
    known = unknown < KNOWN_BELOW
    truth = sample.abundance.reshape(-1, k)[known].astype(np.float64)
    truth /= truth.sum(axis=1, keepdims=True)
    a = np.asarray(outputs["abundance"], dtype=np.float64)[known]
    chi2 = np.asarray(outputs["chi2"], dtype=np.float64)[known]
    metrics = {
        "abundance_rmse": float(np.sqrt(np.mean((a - truth) ** 2))),
        "phase_accuracy": float(np.mean(a.argmax(axis=1) == sample.phase.reshape(-1)[known])),
    }
    for j, name in enumerate(WINDOWS):
        metrics[f"chi2_median_{name}"] = float(np.median(chi2[:, j]))
    if sample.cfg.unknown_region:
        labels = unknown > UNKNOWN_THRESHOLD
        metrics["chi2_auc"] = roc_auc(detection_score(outputs), labels)
        if "novelty" in outputs:
            metrics["novelty_auc"] = roc_auc(np.asarray(outputs["novelty"], np.float64), labels)
    return metrics


def _max_diff(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Worst ONNX-vs-numpy difference per output of ``ref``: absolute for abundances, relative (floored at 1)
    for chi2, residual and novelty, relative to the pixel's sum of |coefficients| for the coefficients."""
    out: dict[str, float] = {}
    for name in ref:
        g, r = np.asarray(got[name], np.float64), np.asarray(ref[name], np.float64)
        if g.shape != r.shape:
            raise RuntimeError(f"output {name!r}: ONNX shape {g.shape} != numpy shape {r.shape}")
        diff = np.abs(g - r)
        if name == "coefficients":
            diff = diff / np.maximum(np.abs(r).sum(axis=1, keepdims=True), 1.0)
        elif name != "abundance":
            diff = diff / np.maximum(np.abs(r), 1.0)
        out[name] = float(diff.max()) if diff.size else 0.0
    return out


def run_onnx(path: str | PathLike[str], spectra: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of an eels-fit file on ``spectra`` (float32 ``[n, 240]``), keyed by name."""
    session = make_session(path)
    x = np.ascontiguousarray(spectra, dtype=np.float32)
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})))


def fit_novelty(progress: ProgressFn | None = None) -> tuple[SubspaceFit, dict[str, Any]]:
    """Fit the novelty score on simulated training-like spectra, in numpy, deterministically
    (:data:`NOVELTY_SEED`); return the fit (constants, threshold, card figures) and the card's record of its data.

    The data are eels-mlp's kind, made by ``scanlens.models.eels``'s own functions on this model's axis (the
    same as eels-mlp's): :data:`NOVELTY_SCANS` randomised scans (seeds 1000+, dose, read noise, drift, axis
    drawn per scan) and :data:`NOVELTY_MIXTURES` random mixtures to fit the subspace
    (:func:`scanlens.models.novelty.fit_subspace_novelty`, at most 50 000 of them); the threshold at the 0.995
    quantile of :data:`NOVELTY_HELDOUT_SCANS` whole held-out scans (seeds 1050+) and
    :data:`NOVELTY_HELDOUT_MIXTURES` held-out mixtures, drawn as ``eels.fit`` draws its calibration data.
    Reports ``data``, ``heldout`` and ``novelty`` progress events. Needs the train extra (``eels`` imports torch).
    """
    from scanlens.models import eels
    from scanlens.models.novelty import fit_subspace_novelty

    if eels.MODEL_AXIS != MODEL_AXIS:
        raise RuntimeError(f"eels-mlp's axis {eels.MODEL_AXIS} is not eels-fit's {MODEL_AXIS}: its data would not fit")
    recipe = eels.Recipe(n_scans=NOVELTY_SCANS, scan_keep=NOVELTY_SCAN_KEEP, n_mixtures=NOVELTY_MIXTURES, epochs=0,
                         n_calibration_scans=NOVELTY_HELDOUT_SCANS, n_calibration=NOVELTY_HELDOUT_MIXTURES)
    x_fit, _, fit_seeds = eels.build_dataset(recipe, NOVELTY_SEED, progress)
    cal_rng = np.random.default_rng(np.random.SeedSequence(NOVELTY_SEED, spawn_key=(11,)))
    cal_seeds = [eels.TRAIN_SEED_BASE + NOVELTY_SEED * 100 + 50 + k for k in range(recipe.n_calibration_scans)]
    total = len(cal_seeds) + 1
    held = []
    for k, scan_seed in enumerate(cal_seeds):
        x, _ = eels.make_scan_pixels(cal_rng, scan_seed, 1.0)  # every pixel, as a scan has them
        held.append(x)
        emit(progress, TrainProgress("heldout", k + 1, total, message=f"scan seed {scan_seed}: {len(x)} pixels"))
    x_mix, _ = eels.make_mixtures(cal_rng, recipe.n_calibration)
    held.append(x_mix)
    emit(progress, TrainProgress("heldout", total, total, message=f"{len(x_mix)} random mixtures"))
    x_held = np.concatenate(held)
    fitted = fit_subspace_novelty(eels.novelty_features(x_fit), eels.novelty_features(x_held),
                                  components=NOVELTY_COMPONENTS, features=NOVELTY_FEATURES, seed=NOVELTY_SEED,
                                  counts_floor=eels.counts_floor(x_fit))
    emit(progress, TrainProgress("novelty", 1, 1, message=f"threshold {fitted.threshold:.4g}"))
    d0 = EELSConfig().dose
    record: dict[str, Any] = {
        "generator": "instrument_sim.eels through scanlens.models.eels (make_scan_pixels, make_mixtures)",
        "seed": NOVELTY_SEED,
        "features": NOVELTY_FEATURES,
        "fit_scan_seeds": fit_seeds,
        "fit_scan_keep": NOVELTY_SCAN_KEEP,
        "fit_mixtures": NOVELTY_MIXTURES,
        "n_fit_samples": int(len(x_fit)),
        "heldout_scan_seeds": cal_seeds,
        "heldout_mixtures": NOVELTY_HELDOUT_MIXTURES,
        "n_heldout_samples": int(len(x_held)),
        "dose_range": [eels.DOSE_RANGE[0] * d0, eels.DOSE_RANGE[1] * d0],
        "source_axes": [ax.model_dump() for ax in eels.TRAIN_AXES],
        "foreign_data": f"scanlens.models.eels.foreign_data(seed={eels.FOREIGN_SEED})",
    }
    return fitted, record


def build(out_path: str | PathLike[str], progress: ProgressFn | None = None) -> dict[str, float]:
    """Write eels-fit with its card to ``out_path``; return the held-out metrics.

    First the novelty score is fitted (:func:`fit_novelty`, about a minute on 2 CPU cores; ``progress``
    receives its events, then ``check`` and ``export``). The metrics come from the held-out scan (seed
    :data:`HELDOUT_SEED`, default config) resampled by the service's AxisMap: abundance RMSE and phase
    accuracy with the unknown region off, chi2 and novelty ROC AUC (and the known pixels' abundance RMSE)
    with it on. The card's novelty figures are ONNX Runtime's scores against the threshold: on that held-out
    scan (``heldout_scan_flagged``) and on ``scanlens.models.eels.foreign_data()`` (``<kind>_flagged``). ONNX
    Runtime must match :func:`fit_numpy` on the held-out scans in every output (:data:`PARITY_TOL`,
    :data:`NOVELTY_PARITY_TOL`) and on the foreign data in the novelty score, else RuntimeError.
    """
    from scanlens.models.eels import foreign_data

    path = Path(out_path)
    fitted, novelty_training = fit_novelty(progress)
    constants = NoveltyConstants.of(fitted.subspace)
    proto = _graph_proto(constants)
    onnx.checker.check_model(proto)
    raw = proto.SerializeToString()

    plain = EELSSample(EELSConfig(seed=HELDOUT_SEED))
    with_unknown = EELSSample(EELSConfig(seed=HELDOUT_SEED, unknown_region=True))
    foreign = foreign_data()
    session = make_session(raw)
    metrics: dict[str, float] = {}
    worst: dict[str, float] = {name: 0.0 for name in OUTPUT_NAMES}

    def checked(x: np.ndarray, names: tuple[str, ...] = OUTPUT_NAMES) -> dict[str, np.ndarray]:
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})))
        ref = fit_numpy(x, constants)
        for name, d in _max_diff(got, {k: ref[k] for k in names}).items():
            worst[name] = max(worst[name], d)
        return got

    n_checks = 2 + len(foreign)
    for step, (sample, prefix) in enumerate(((plain, ""), (with_unknown, "unknown_region_")), start=1):
        got = checked(scan_spectra(sample))
        scores = evaluate(got, sample)
        if prefix:
            metrics["chi2_auc"] = scores.pop("chi2_auc")
            metrics["novelty_auc"] = scores.pop("novelty_auc")
        else:
            fitted.calibration["heldout_scan_flagged"] = float(np.mean(got["novelty"] > fitted.threshold))
        metrics.update({prefix + k: v for k, v in scores.items()})
        emit(progress, TrainProgress("check", step, n_checks, message=f"held-out scan {prefix or 'plain'}"))
    for step, (kind, x) in enumerate(foreign.items(), start=3):
        # the novelty score only: far outside the reference set the float32 chi2 of a huge misfit is not
        # held to PARITY_TOL (its relative error there reaches ~2e-4), and no figure is taken from it
        novelty = checked(x, ("novelty",))["novelty"]
        fitted.calibration[f"{kind}_flagged"] = float(np.mean(novelty > fitted.threshold))
        emit(progress, TrainProgress("check", step, n_checks, message=f"foreign data: {kind}"))
    limits = {name: NOVELTY_PARITY_TOL if name == "novelty" else PARITY_TOL for name in OUTPUT_NAMES}
    bad = {k: v for k, v in worst.items() if not v < limits[k]}
    if bad:
        raise RuntimeError(f"ONNX Runtime differs from the numpy reference: {bad} (limits {limits})")
    metrics["onnx_max_abs_diff_abundance"] = worst["abundance"]
    metrics["onnx_max_rel_diff_chi2"] = worst["chi2"]
    metrics["onnx_max_rel_diff_novelty"] = worst["novelty"]
    log.info("held-out metrics %s; novelty %s", metrics, fitted.calibration)

    set_card(proto, model_card(metrics, fitted.spec(), novelty_training))
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    emit(progress, TrainProgress("export", 1, 1, message=f"{path.stat().st_size} bytes"))
    return metrics


def train(out_path: str | PathLike[str], *, quick: bool = False, seed: int = 0,
          progress: ProgressFn | None = None) -> dict[str, float]:
    """:func:`build`, with the ``train(out_path, *, quick, seed, progress)`` signature of the trained models
    (``models/training.py``), so ``scanlens train`` can show its progress the same way; ``quick`` and ``seed``
    are ignored (a fixed graph; the novelty data always use :data:`NOVELTY_SEED`)."""
    del quick, seed
    return build(out_path, progress)


if __name__ == "__main__":  # python -m models.physics_fit [OUT]: rebuild the committed file
    import sys

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    build(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("eels-fit.onnx"))
