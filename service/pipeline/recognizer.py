"""A recognizer: one ONNX Runtime session plus the model card that says how to read its outputs.

Sessions are created once, with explicit providers, fixed thread counts and spinning off, and warmed
up before the first scan. ``run`` is called from the inference worker thread only (ONNX Runtime
releases the GIL while it computes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from ..protocol.messages import ArraySpec, Axis, ScanStart
from ..protocol.model_card import CARD_KEY, ModelCard
from .processor import Processor, WorkItem

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model file that cannot be served (missing card, card and graph disagree, ...)."""


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def read_card(session: ort.InferenceSession, path: Path) -> ModelCard:
    raw = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    if raw is None:
        raise ModelError(f"{path}: no model card (metadata key {CARD_KEY!r})")
    try:
        return ModelCard.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ModelError(f"{path}: invalid model card: {exc}") from None


def load_model(path: Path, threads: int) -> tuple[ort.InferenceSession, ModelCard]:
    """An ONNX Runtime session for ``path`` and its model card; ModelError when either is unusable."""
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{path}: cannot load ONNX model: {exc}") from None
    return session, read_card(session, path)


class Recognizer(Processor):
    """An ONNX model with its card; ``run`` maps a float32 batch to the published per-pixel arrays."""

    def __init__(self, path: Path, *, threads: int = 2, warm_up_batch: int = 512,
                 loaded: tuple[ort.InferenceSession, ModelCard] | None = None):
        self.path = Path(path)
        self.threads = threads  # intra-op threads of one run
        self.session, self.card = loaded or load_model(self.path, threads)
        self.name = self.card.name
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != self.card.input.name:
            raise ModelError(f"{self.path}: graph inputs {[i.name for i in inputs]} do not match the card")
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [o.name for o in self.card.outputs if o.name not in graph_outputs]
        if missing:
            raise ModelError(f"{self.path}: card names outputs {missing} the graph does not have")
        self._output_names = [o.name for o in self.card.outputs]
        self.modality = self.card.modality
        self._setup(warm_up_batch)

    def _setup(self, warm_up_batch: int) -> None:
        """Spectral models: input shape, published arrays, warm-up."""
        if self.card.input.axis is None:
            raise ModelError(f"{self.path}: a spectral recognizer needs an input axis")
        self.components = self.card.input.components
        self.channels = self.card.input.axis.size
        self.input_shape = (self.channels,) if self.components is None else (self.channels, len(self.components))
        self._pixel_specs = self._build_pixel_specs()
        if warm_up_batch:
            self.run(np.zeros((warm_up_batch, *self.input_shape), np.float32))

    def input_axis(self, start: ScanStart) -> Axis:
        return self.card.input.axis

    def describe(self) -> dict:
        return self.card.model_dump(mode="json")

    @property
    def class_labels(self) -> list[str] | None:
        for out in self.card.outputs:
            if out.role == "class_probabilities":
                return out.labels
        return None

    def pixel_specs(self) -> list[ArraySpec]:
        """What a maps message carries per pixel, in order (shape without the leading pixel axis)."""
        return list(self._pixel_specs)

    def _build_pixel_specs(self) -> tuple[ArraySpec, ...]:
        specs: list[ArraySpec] = []
        for out in self.card.outputs:
            if out.role == "class_probabilities":
                specs.append(ArraySpec(name="class", dtype="uint8", shape=[], labels=out.labels))
                specs.append(ArraySpec(name="confidence", dtype="float32", shape=[]))
            else:
                specs.append(ArraySpec(name=out.name, dtype="float32", shape=[len(out.labels)],
                                       labels=out.labels, units=out.units))
        return tuple(specs)

    def process(self, items: list[WorkItem]) -> list[dict[str, np.ndarray]]:
        """One session run for all items: each is mapped straight into one preallocated batch."""
        total = sum(item.n_pixels for item in items)
        batch = np.empty((total, *self.input_shape), dtype=np.float32)
        offset = 0
        for item in items:
            item.binding.prepare(item.spectra, out=batch[offset: offset + item.n_pixels])
            offset += item.n_pixels
        outputs = self.run(batch)
        per_item, offset = [], 0
        for item in items:
            end = offset + item.n_pixels
            per_item.append({name: values[offset:end] for name, values in outputs.items()})
            offset = end
        return per_item

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 ``[n, channels]`` -> published arrays keyed like ``pixel_specs`` (each ``[n, ...]``)."""
        raw = self.session.run(self._output_names, {self.card.input.name: batch})
        result: dict[str, np.ndarray] = {}
        for out, value in zip(self.card.outputs, raw):
            if out.role == "class_probabilities":
                result["class"] = value.argmax(axis=1).astype(np.uint8)
                result["confidence"] = value.max(axis=1).astype(np.float32, copy=False)
            else:
                result[out.name] = value.astype(np.float32, copy=False)
        return result


def open_recognizer(path: Path, *, threads: int = 2) -> Recognizer:
    """The right recognizer for a model file: spectral, or image (a card with an input pixel size)."""
    session, card = load_model(Path(path), threads)
    if card.input.pixel_size is not None:
        from .frames import FrameRecognizer  # image models: segmentation + post-processing

        return FrameRecognizer(path, threads=threads, loaded=(session, card))
    return Recognizer(path, threads=threads, loaded=(session, card))


def load_recognizers(model_dir: Path, names: list[str] | None = None, *, threads: int = 2) -> dict[str, Recognizer]:
    """Every ``*.onnx`` in ``model_dir`` (or only ``names``), keyed by card name; ModelError on problems."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.onnx"))
    if not files:
        raise ModelError(f"no *.onnx model files in {model_dir}")
    loaded: dict[str, Recognizer] = {}
    for path in files:
        rec = open_recognizer(path, threads=threads)
        if names is not None and rec.name not in names:
            continue
        if rec.name in loaded:
            raise ModelError(f"two model files are named {rec.name!r}: {loaded[rec.name].path} and {path}")
        loaded[rec.name] = rec
        log.info("loaded recognizer %s (%s) from %s", rec.name, rec.modality, path)
    if names is not None and (absent := sorted(set(names) - set(loaded))):
        raise ModelError(f"recognizers {absent} not found in {model_dir}")
    return loaded
