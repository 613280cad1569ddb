"""Loading recognizers: one ONNX file -> the right recognizer, a folder of files -> all of them.

The card decides the kind: an input ``axis`` makes a ``SpectralRecognizer`` (``spectral.py``), an
input ``pixel_size`` a ``FrameRecognizer`` (``frames.py``). Both hold the file's ``OnnxModel``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .frames import FrameRecognizer
from .onnx_model import ModelError, OnnxModel
from .spectral import SpectralRecognizer

log = logging.getLogger(__name__)

#: A recognizer loaded from an ONNX file.
Recognizer = SpectralRecognizer | FrameRecognizer


def recognizer_for(model: OnnxModel) -> Recognizer:
    """The recognizer an opened model's card asks for (warmed up)."""
    if model.card.input.pixel_size is not None:
        return FrameRecognizer(model)
    return SpectralRecognizer(model)


def open_recognizer(path: Path | str, *, threads: int = 2) -> Recognizer:
    """The recognizer of one model file; ModelError when it cannot be served."""
    return recognizer_for(OnnxModel.open(path, threads=threads))


def load_recognizers(model_dir: Path | str, names: list[str] | None = None, *,
                     threads: int = 2) -> dict[str, Recognizer]:
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
