"""One ONNX model: an ONNX Runtime session and the model card that says how to read its outputs.

Sessions are created once, with explicit providers, fixed thread counts and spinning off; the card
(``scanlens.protocol.model_card``) is checked against the graph when the model is opened. Spectral
and frame recognizers (``spectral.py``, ``frames.py``) each hold one ``OnnxModel``; ``run`` is called
from inference worker threads only (ONNX Runtime releases the GIL while it computes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..protocol.model_card import ModelCard, OutputSpec, card_from_metadata


class ModelError(RuntimeError):
    """A model file that cannot be served (missing card, card and graph disagree, ...)."""


def session_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime options of every scanlens session: ``threads`` intra-op threads, no spinning."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def read_card(session: ort.InferenceSession, source: Path) -> ModelCard:
    """The model card in a session's metadata; ModelError naming ``source`` when it is absent or invalid."""
    try:
        return card_from_metadata(session.get_modelmeta().custom_metadata_map)
    except KeyError as exc:
        raise ModelError(f"{source}: {exc.args[0]}") from None
    except ValueError as exc:
        raise ModelError(f"{source}: invalid model card: {exc}") from None


class OnnxModel:
    """A session plus its card, checked against each other: one input named as in the card, every
    output the card names present in the graph."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, source: Path, threads: int):
        self.session = session
        self.card = card
        self.path = Path(source)
        self.threads = threads  # intra-op threads of one run
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != card.input.name:
            raise ModelError(f"{self.path}: graph inputs {[i.name for i in inputs]} do not match the card")
        graph_outputs = {o.name for o in session.get_outputs()}
        missing = [o.name for o in card.outputs if o.name not in graph_outputs]
        if missing:
            raise ModelError(f"{self.path}: card names outputs {missing} the graph does not have")

    @classmethod
    def open(cls, path: Path | str, *, threads: int = 2) -> OnnxModel:
        """A session for ``path`` and its card; ModelError when either is unusable."""
        path = Path(path)
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: cannot load ONNX model: {exc}") from None
        return cls(session, read_card(session, path), path, threads)

    @classmethod
    def from_session(cls, session: ort.InferenceSession, *, source: Path | str = "<session>",
                     threads: int = 2) -> OnnxModel:
        """Wrap a session that is already open (its card read from the session's metadata)."""
        return cls(session, read_card(session, Path(source)), Path(source), threads)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def modality(self) -> str:
        return self.card.modality

    @property
    def input_name(self) -> str:
        return self.card.input.name

    def outputs(self, role: str) -> list[OutputSpec]:
        """The card's outputs of one role, in card order."""
        return [o for o in self.card.outputs if o.role == role]

    def run(self, output_names: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
        """The named outputs for one input batch (worker threads only)."""
        return self.session.run(list(output_names), {self.card.input.name: batch})

    def describe(self) -> dict[str, Any]:
        """What the ``models`` control request reports: the card, verbatim."""
        return self.card.model_dump(mode="json")
