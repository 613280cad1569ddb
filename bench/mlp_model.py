"""The benchmark's reference workload: an MLP ``C -> 128 -> 64 -> 4`` with random weights (docs/performance.md, reference figures).

Built with onnx.helper (no torch), with a model card so the service loads it like any recognizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import CARD_KEY, InputSpec, ModelCard, OutputSpec


def write_mlp(path: Path, channels: int = 2048, hidden: tuple[int, int] = (128, 64), classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    sizes = [channels, *hidden, classes]
    inits, nodes, x = [], [], "spectra"
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{k}")]
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]), helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        x = f"a{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{k}"]))
            x = f"r{k}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("spectra", TensorProto.FLOAT, ["n", channels])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    labels = [f"c{i}" for i in range(classes)]
    card = ModelCard(name=f"mlp-{channels}", version="bench", modality="eels", description="benchmark MLP",
                     architecture="MLP " + " -> ".join(map(str, sizes)),
                     input=InputSpec(name="spectra", axis=Axis(size=channels, offset=0.0, scale=1.0, units="eV"),
                                     normalization="none"),
                     outputs=[OutputSpec(name="probabilities", role="class_probabilities", labels=labels)])
    helper.set_model_props(model, {CARD_KEY: card.model_dump_json()})
    onnx.save(model, str(path))
    return path
