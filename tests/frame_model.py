"""A tiny hand-built ONNX image recognizer with a predictable answer, for frame-path tests.

Input ``image`` ``[n, 1, h, w]`` at 0.02 nm/px. Classes: background, atom, vacancy. ``vacancy`` =
sigmoid(10 (x - 2)) (bright plateaus above 2 stand in for defects), ``atom`` = (1 - vacancy) x / (x + 0.5)
(peaks at blob centres), background the rest. Built with onnx.helper, no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanlens.protocol.messages import PixelSize
from scanlens.protocol.model_card import CARD_KEY, InputSpec, ModelCard, OutputSpec

LABELS = ["background", "atom", "vacancy"]
PIXEL_NM = 0.02


def write_frame_model(path: Path, *, modality: str = "haadf") -> Path:
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
        input=InputSpec(name="image", pixel_size=PixelSize(size=PIXEL_NM, units="nm"), normalization="none"),
        outputs=[OutputSpec(name="probabilities", role="segmentation", labels=LABELS)],
        postprocess={"atom_classes": ["atom"], "defect_classes": ["vacancy"], "min_distance_px": 5,
                     "threshold": 0.3, "size_multiple": 8, "track_gate_nm": 0.2})
    helper.set_model_props(model, {CARD_KEY: card.model_dump_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def render(shape: tuple[int, int], atoms: np.ndarray, vacancies: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian atom blobs of height 1 at ``atoms`` [n, 2] (x, y) and 3x3 plateaus of 3 at ``vacancies``."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    img = np.zeros(shape, np.float32)
    for x, y in atoms:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    for x, y in vacancies:
        img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 3.0
    return img
