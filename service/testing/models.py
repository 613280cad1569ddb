"""Tiny hand-built ONNX recognizers with exactly predictable answers, and the data they recognize.

``band``: a spectral model that splits its input axis into three equal bands; the abundance of class k
is the share of the spectrum's total counts in band k, and the class probabilities are a sharp softmax
of those shares. So a spectrum with counts only in band k is class k with abundance one-hot(k), and a
test can check every published pixel exactly.

``frame-test``: an image model, input ``image`` ``[n, 1, h, w]`` at 0.02 nm/px. Classes: background,
atom, vacancy. ``vacancy`` = sigmoid(10 (x - 2)) (bright plateaus above 2 stand in for defects),
``atom`` = (1 - vacancy) x / (x + 0.5) (peaks at blob centres), background the rest.

Both are built with onnx.helper (the ``test`` extra), no torch needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..client import Instrument
from ..protocol.messages import Axis, PixelSize
from ..protocol.model_card import CARD_KEY, InputSpec, ModelCard, NoveltySpec, OutputSpec

BAND_LABELS = ["low", "mid", "high"]
FRAME_LABELS = ["background", "atom", "vacancy"]
#: The pixel size the frame model expects (nm per pixel).
FRAME_PIXEL_NM = 0.02


# --------------------------------------------------------------------------- band: a spectral model


def band_axis(size: int = 60, offset: float = 10.0, scale: float = 1.0, units: str = "eV") -> Axis:
    """The band model's input axis (by default 60 channels of 1 eV from 10 eV)."""
    return Axis(size=size, offset=offset, scale=scale, units=units)


#: The band model's novelty threshold (``write_band_model(novelty=True)``): a spectrum whose counts are
#: not mostly in one band (a flat one scores 2/3) is novel.
BAND_NOVELTY_THRESHOLD = 0.5


def write_band_model(path: Path, *, name: str = "band", modality: str = "eels", axis: Axis | None = None,
                     novelty: bool = False) -> Path:
    """Write the band model (with its model card) to ``path``; returns ``path``. With ``novelty`` it also
    has a novelty output, 1 - the largest band share (0 for a band spectrum, 2/3 for a flat one), novel
    above ``BAND_NOVELTY_THRESHOLD``."""
    axis = axis or band_axis()
    c = axis.size
    bands = np.zeros((c, 3), np.float32)
    edges = np.linspace(0, c, 4).astype(int)
    for k in range(3):
        bands[edges[k]:edges[k + 1], k] = 1.0
    nodes = [
        helper.make_node("MatMul", ["spectra", "bands"], ["band_sums"]),
        helper.make_node("ReduceSum", ["band_sums", "axes"], ["total"], keepdims=1),
        helper.make_node("Add", ["total", "eps"], ["total_eps"]),
        helper.make_node("Div", ["band_sums", "total_eps"], ["abundance"]),
        helper.make_node("Mul", ["abundance", "sharp"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3]),
               helper.make_tensor_value_info("abundance", TensorProto.FLOAT, ["n", 3])]
    if novelty:
        nodes += [helper.make_node("ReduceMax", ["abundance"], ["largest"], axes=[1], keepdims=0),
                  helper.make_node("Sub", ["one", "largest"], ["novelty"])]
        outputs.append(helper.make_tensor_value_info("novelty", TensorProto.FLOAT, ["n"]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("spectra", TensorProto.FLOAT, ["n", c])],
        outputs,
        initializer=[numpy_helper.from_array(bands, "bands"),
                     numpy_helper.from_array(np.array([1], np.int64), "axes"),
                     numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
                     numpy_helper.from_array(np.array(50.0, np.float32), "sharp"),
                     numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        name=name, version="test", modality=modality, description="test model: counts share per band",
        architecture="band sums + softmax (hand-built)",
        input=InputSpec(name="spectra", axis=axis, normalization="divide by total counts"),
        outputs=[OutputSpec(name="probabilities", role="class_probabilities", labels=BAND_LABELS),
                 OutputSpec(name="abundance", role="parameters", labels=BAND_LABELS, units=["fraction"] * 3)]
        + ([OutputSpec(name="novelty", role="novelty", labels=["novelty"])] if novelty else []),
        training={"generator": "none"}, metrics={},
        novelty=NoveltySpec(output="novelty", threshold=BAND_NOVELTY_THRESHOLD,
                            method="1 - the largest band share (hand-built)") if novelty else None)
    helper.set_model_props(model, {CARD_KEY: card.model_dump_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def band_spectra(classes: np.ndarray, axis: Axis | None = None, counts: float = 100.0) -> np.ndarray:
    """Spectra ``[n, axis.size]`` whose counts sit in the band of each class (uniform within it)."""
    axis = axis or band_axis()
    c = axis.size
    edges = np.linspace(0, c, 4).astype(int)
    out = np.zeros((len(classes), c), np.float32)
    for i, k in enumerate(classes):
        out[i, edges[k]:edges[k + 1]] = counts
    return out


async def send_band_scan(inst: Instrument, scan_id: str, truth: np.ndarray, axis: Axis | None = None) -> None:
    """Stream a scan whose pixel classes are ``truth`` [rows, cols], one message per row."""
    async with inst.scan(scan_id, "eels", truth.shape, axis or band_axis()) as scan:
        for row in range(truth.shape[0]):
            await scan.send_line(row, band_spectra(truth[row], axis))


# --------------------------------------------------------------------------- frame-test: an image model


def write_frame_model(path: Path, *, modality: str = "haadf") -> Path:
    """Write the frame-test model (with its model card and post-processing) to ``path``; returns ``path``."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Sub", ["image", "two"], ["xm2"]),
        helper.make_node("Mul", ["xm2", "ten"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["vac"]),
        helper.make_node("Add", ["image", "half"], ["xph"]),
        helper.make_node("Div", ["image", "xph"], ["ratio"]),
        helper.make_node("Sub", ["one", "vac"], ["notvac"]),
        helper.make_node("Mul", ["ratio", "notvac"], ["atom"]),
        helper.make_node("Sub", ["notvac", "atom"], ["bg"]),
        helper.make_node("Concat", ["bg", "atom", "vac"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "frame-test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        initializer=[c("two", 2.0), c("ten", 10.0), c("half", 0.5), c("one", 1.0)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        name="frame-test", version="test", modality=modality, description="test image model",
        architecture="pointwise (hand-built)",
        input=InputSpec(name="image", pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm"), normalization="none"),
        outputs=[OutputSpec(name="probabilities", role="segmentation", labels=FRAME_LABELS)],
        postprocess={"atom_classes": ["atom"], "defect_classes": ["vacancy"], "min_distance_px": 5,
                     "threshold": 0.3, "size_multiple": 8, "track_gate_nm": 0.2})
    helper.set_model_props(model, {CARD_KEY: card.model_dump_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def render_frame(shape: tuple[int, int], atoms: np.ndarray, vacancies: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian atom blobs of height 1 at ``atoms`` [n, 2] (x, y) and 3x3 plateaus of 3 at ``vacancies``."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    img = np.zeros(shape, np.float32)
    for x, y in atoms:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    for x, y in vacancies:
        img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 3.0
    return img
