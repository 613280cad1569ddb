"""A tiny hand-built ONNX recognizer with an exactly predictable answer, for service tests.

The "band" model splits its input axis into three equal bands; the abundance of class k is the
share of the spectrum's total counts in band k, and the class probabilities are a sharp softmax of
those shares. So a spectrum with counts only in band k is class k with abundance one-hot(k), and a
test can check every published pixel exactly. Built with onnx.helper (no torch needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import CARD_KEY, InputSpec, ModelCard, OutputSpec

LABELS = ["low", "mid", "high"]


def band_axis(size: int = 60, offset: float = 10.0, scale: float = 1.0, units: str = "eV") -> Axis:
    return Axis(size=size, offset=offset, scale=scale, units=units)


def write_band_model(path: Path, *, name: str = "band", modality: str = "eels", axis: Axis | None = None) -> Path:
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
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("spectra", TensorProto.FLOAT, ["n", c])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("abundance", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(bands, "bands"),
                     numpy_helper.from_array(np.array([1], np.int64), "axes"),
                     numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
                     numpy_helper.from_array(np.array(50.0, np.float32), "sharp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        name=name, version="test", modality=modality, description="test model: counts share per band",
        architecture="band sums + softmax (hand-built)",
        input=InputSpec(name="spectra", axis=axis, normalization="divide by total counts"),
        outputs=[OutputSpec(name="probabilities", role="class_probabilities", labels=LABELS),
                 OutputSpec(name="abundance", role="parameters", labels=LABELS, units=["fraction"] * 3)],
        training={"generator": "none"}, metrics={})
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


async def send_band_scan(inst, scan_id: str, truth: np.ndarray, axis: Axis | None = None) -> None:
    """Stream a scan whose pixel classes are ``truth`` [rows, cols], one message per row."""
    async with inst.scan(scan_id, "eels", truth.shape, axis or band_axis()) as scan:
        for row in range(truth.shape[0]):
            await scan.send_line(row, band_spectra(truth[row], axis))
