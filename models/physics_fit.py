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

The detection score for spectra that are not in the reference set is ``chi2`` summed over both
windows (:func:`detection_score`). :func:`fit_numpy` is the independent reference (``np.linalg.lstsq``
in float64); :func:`build` writes the ONNX file with its model card, checks ONNX Runtime against it
and measures the metrics on a held-out simulated scan.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanlens.sim.eels import PHASES, UNKNOWN_PHASE, EELSConfig, EELSSample, axis_energies, reference_spectra
from scanlens.models.export import make_session, set_card
from scanlens.models.scoring import detection_score, roc_auc  # noqa: F401  (re-exported: the fit's own scores)
from scanlens.pipeline import AxisMap
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec

log = logging.getLogger(__name__)

NAME = "eels-fit"
VERSION = "1"
#: The same axis as eels-mlp, so both recognizers can run on one scan.
MODEL_AXIS = Axis(size=240, offset=5.0, scale=0.5, units="eV")
INPUT_NAME = "spectra"
OUTPUT_NAMES: tuple[str, ...] = ("abundance", "chi2", "residual", "coefficients")
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


def fit_numpy(spectra: np.ndarray) -> dict[str, np.ndarray]:
    """The reference implementation in float64 with ``np.linalg.lstsq``: ``[n, 240]`` counts on
    :data:`MODEL_AXIS` -> ``abundance``, ``chi2``, ``residual``, ``coefficients`` (see the module doc)."""
    y = np.asarray(spectra, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != MODEL_AXIS.size:
        raise ValueError(f"spectra must be [n, {MODEL_AXIS.size}], got {y.shape}")
    refs = references()
    sw = np.sqrt(fit_weights())
    c = np.linalg.lstsq((refs * sw).T, (y * sw).T, rcond=None)[0].T
    return _post(y, c, refs, window_masks(), degrees_of_freedom())


# --------------------------------------------------------------------------- the ONNX graph


def _graph_proto() -> onnx.ModelProto:
    """The fit as an ONNX model (opset 17, float32 constants), without the card."""
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
    ]
    k = len(PHASES)
    outputs = [
        helper.make_tensor_value_info("abundance", TensorProto.FLOAT, ["n", k]),
        helper.make_tensor_value_info("chi2", TensorProto.FLOAT, ["n", n_win]),
        helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["n", n_win]),
        helper.make_tensor_value_info("coefficients", TensorProto.FLOAT, ["n", k]),
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


def model_card(metrics: Mapping[str, float]) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    windows = list(WINDOWS)
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality="eels",
        description=(
            "Classical physics fit of EELS spectrum images of STO / LSMO / BFO heterostructures: "
            "weighted linear least squares on the known reference spectra over 5-125 eV, giving "
            "abundances, and reduced chi2 and relative rms residual per window (plasmons 5-35 eV, "
            "chemistry 35-125 eV); a high chi2 marks a spectrum outside the reference set."
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
        },
        metrics=dict(metrics),
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
    unknown region also ``chi2_auc``: ROC AUC of :func:`detection_score` for unknown abundance > 0.5.
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
    return metrics


def _max_diff(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Worst ONNX-vs-numpy difference per output: absolute for abundances, relative for chi2 and
    residual, relative to the pixel's sum of |coefficients| for the coefficients."""
    out: dict[str, float] = {}
    for name in OUTPUT_NAMES:
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


def build(out_path: str | PathLike[str]) -> dict[str, float]:
    """Write eels-fit with its card to ``out_path``; return the held-out metrics.

    The metrics come from the held-out scan (seed :data:`HELDOUT_SEED`, default config) resampled by
    the service's AxisMap: abundance RMSE and phase accuracy with the unknown region off, chi2 ROC AUC
    (and the known pixels' abundance RMSE) with it on. ONNX Runtime must match :func:`fit_numpy` on
    both scans (:data:`PARITY_TOL`), else RuntimeError.
    """
    path = Path(out_path)
    proto = _graph_proto()
    onnx.checker.check_model(proto)
    raw = proto.SerializeToString()

    plain = EELSSample(EELSConfig(seed=HELDOUT_SEED))
    with_unknown = EELSSample(EELSConfig(seed=HELDOUT_SEED, unknown_region=True))
    session = make_session(raw)
    metrics: dict[str, float] = {}
    worst: dict[str, float] = {name: 0.0 for name in OUTPUT_NAMES}
    for sample, prefix in ((plain, ""), (with_unknown, "unknown_region_")):
        x = scan_spectra(sample)
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})))
        for name, d in _max_diff(got, fit_numpy(x)).items():
            worst[name] = max(worst[name], d)
        scores = evaluate(got, sample)
        if prefix:
            metrics["chi2_auc"] = scores.pop("chi2_auc")
        metrics.update({prefix + k: v for k, v in scores.items()})
    bad = {k: v for k, v in worst.items() if not v < PARITY_TOL}
    if bad:
        raise RuntimeError(f"ONNX Runtime differs from the numpy lstsq fit: {bad} (limit {PARITY_TOL:g})")
    metrics["onnx_max_abs_diff_abundance"] = worst["abundance"]
    metrics["onnx_max_rel_diff_chi2"] = worst["chi2"]
    log.info("held-out metrics %s", metrics)

    set_card(proto, model_card(metrics))
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return metrics


if __name__ == "__main__":  # python -m models.physics_fit [OUT]: rebuild the committed file
    import sys

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    build(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("eels-fit.onnx"))
