"""Loading recognizers: one ONNX file -> the right recognizer, a folder of files -> all of them.

The card decides the kind: an input ``axis`` makes a ``SpectralRecognizer`` (``spectral.py``), an
input ``pixel_size`` a ``FrameRecognizer`` (``frames.py``). Both hold the file's ``OnnxModel``, opened
with the requested execution providers (``providers.py``); ``load_recognizers`` logs their fallback
warnings once per load, not once per model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from .frames import DEFAULT_TILE_PX, FrameRecognizer
from .onnx_model import ModelError, OnnxModel
from .spectral import SpectralRecognizer

log = logging.getLogger(__name__)

#: A recognizer loaded from an ONNX file.
Recognizer = SpectralRecognizer | FrameRecognizer


def recognizer_for(model: OnnxModel, *, tile_px: int = DEFAULT_TILE_PX) -> Recognizer:
    """The recognizer an opened model's card asks for (warmed up); ``tile_px``: a frame recognizer's
    tiles (the ``frame_tile_px`` setting, ``FrameRecognizer.segment_scored``)."""
    if model.card.input.pixel_size is not None:
        return FrameRecognizer(model, tile_px=tile_px)
    return SpectralRecognizer(model)


def open_recognizer(path: Path | str, *, threads: int | Mapping[str, int] = 2,
                    providers: Sequence[str] = ("CPU",), tile_px: int = DEFAULT_TILE_PX) -> Recognizer:
    """The recognizer of one model file (``OnnxModel.open``: threads and providers; ``recognizer_for``:
    ``tile_px``); ModelError when it cannot be served. Its provider warnings are in ``rec.model.warnings``,
    not logged."""
    return recognizer_for(OnnxModel.open(path, threads=threads, providers=providers), tile_px=tile_px)


def provider_warnings(recognizers: Mapping[str, object]) -> list[str]:
    """The provider fallback warnings of every recognizer's model, each text once, in order."""
    return list(dict.fromkeys(w for rec in recognizers.values()
                              for w in getattr(getattr(rec, "model", None), "warnings", ())))


def load_recognizers(model_dir: Path | str, names: list[str] | None = None, *,
                     threads: int | Mapping[str, int] = 2, providers: Sequence[str] = ("CPU",),
                     user_dir: Path | str | None = None, tile_px: int = DEFAULT_TILE_PX) -> dict[str, Recognizer]:
    """Every ``*.onnx`` in ``model_dir`` and, next to them, in the user model directory ``user_dir`` (when
    given; it need not exist), or only ``names``; keyed by card name. ModelError on problems, among them
    a name found in two files: a user model never shadows another (the error names both files and the fix).
    ``threads``, ``providers`` and ``tile_px`` as in ``open_recognizer``; each provider fallback warning is
    logged once."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.onnx"))
    if not files:
        raise ModelError(f"no *.onnx model files in {model_dir}")
    user_files: list[Path] = []
    if user_dir is not None and Path(user_dir).is_dir() and Path(user_dir).resolve() != model_dir.resolve():
        user_files = sorted(Path(user_dir).glob("*.onnx"))
    loaded: dict[str, Recognizer] = {}
    every: dict[str, Path] = {}  # name -> file, over all files (also those ``names`` leaves out)
    for path in [*files, *user_files]:
        rec = open_recognizer(path, threads=threads, providers=providers, tile_px=tile_px)
        if rec.name in every:
            first = every[rec.name]
            if path in user_files:
                raise ModelError(
                    f"model name {rec.name!r} is in both {first} and the user model {path}: a user model must not "
                    f"shadow another; rename it (`scanlens train ... --name NEW`), move it out of {path.parent}, "
                    f"or replace the shipped model on purpose (`scanlens train ... --replace-shipped`)")
            raise ModelError(f"two model files are named {rec.name!r}: {first} and {path}")
        every[rec.name] = path
        if names is not None and rec.name not in names:
            continue
        loaded[rec.name] = rec
        log.info("loaded recognizer %s (%s) from %s on %s", rec.name, rec.modality, path,
                 ", ".join(rec.model.providers))
    if names is not None and (absent := sorted(set(names) - set(loaded))):
        where = f"{model_dir} or {user_dir}" if user_files else str(model_dir)
        raise ModelError(f"recognizers {absent} not found in {where}; available: {sorted(every)}")
    for warning in provider_warnings(loaded):
        log.warning("%s", warning)
    return loaded
