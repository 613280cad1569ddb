"""stem-unet's card and ONNX file: the model card, and the export with batch, height and width dynamic,
checked against torch in ONNX Runtime."""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch
from torch import nn

from scanlens.models.export import ProgressFn, TrainProgress, check_parity, emit, export_onnx_file, make_session
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec
from scanlens.sim.stem import SEG_CLASSES

from scanlens.models.novelty import OUTPUT_NAME as NOVELTY_OUTPUT
from scanlens.models.novelty import novelty_output

from .config import INPUT_NAME, MODALITY, MODEL_PIXEL, NAME, NORMALIZATION, OUTPUT_NAMES, SIZE_MULTIPLE, VERSION
from .fitting import SegmentationResult
from .network import WithFrameNovelty, architecture


def model_card(result: SegmentationResult) -> ModelCard:
    """The card stored in the ONNX file's metadata."""
    return ModelCard(
        name=NAME,
        version=VERSION,
        modality=MODALITY,
        description=(
            "Atom columns and point defects (metal and S2 vacancies, Mo dopants, W adatoms) in atomic-resolution "
            "HAADF STEM frames of monolayer WS2 at 0.02 nm per pixel: per-pixel class probabilities, turned into "
            "sub-pixel atom coordinates, a defect list and defect tracks by the service's post-processing."
        ),
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, pixel_size=MODEL_PIXEL, normalization=NORMALIZATION),
        outputs=[OutputSpec(name=OUTPUT_NAMES[0], role="segmentation", labels=list(SEG_CLASSES),
                            description="softmax over SEG_CLASSES per pixel (temperature-calibrated), [n, 7, h, w]"),
                 novelty_output("one score per frame, [n]: distance of the frame's deepest U-Net features from "
                                "those of the training frames")],
        training=result.training,
        metrics=result.metrics,
        postprocess=result.postprocess,
        novelty=result.novelty.spec(),
    )


def export_model(model: nn.Module, check_inputs: np.ndarray, path: str | PathLike[str], card: ModelCard,
                 progress: ProgressFn | None = None) -> float:
    """Export with batch, height and width dynamic (height and width multiples of 16) to one ONNX file
    with ``card`` in its metadata; ONNX Runtime must match torch on ``check_inputs`` ``[n, 1, h, w]``.

    The file is written by ``models.export.export_onnx_file`` (as for every model); the parity check
    also runs a frame of another size.
    """
    emit(progress, TrainProgress("export", 0, 1, message=f"exporting to {path}"))
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    hb = torch.export.Dim("h16", min=1, max=1 << 10)
    wb = torch.export.Dim("w16", min=1, max=1 << 10)
    example = torch.from_numpy(np.ascontiguousarray(check_inputs[:2], dtype=np.float32))
    names = [*OUTPUT_NAMES, *([NOVELTY_OUTPUT] if card.novelty is not None else [])]
    path = export_onnx_file(model, example, path, card, output_names=names,
                            dynamic_shapes=({0: batch, 2: SIZE_MULTIPLE * hb, 3: SIZE_MULTIPLE * wb},))
    session = make_session(path)
    worst = 0.0
    for x in (check_inputs, check_inputs[:1, :, :48, :80]):
        x = np.ascontiguousarray(x, dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))
        ref = ref if isinstance(ref, tuple) else (ref,)
        worst = max(worst, check_parity(session, {n: r.numpy() for n, r in zip(names, ref)}, {INPUT_NAME: x}))
    emit(progress, TrainProgress("export", 1, 1, message=f"ONNX Runtime matches torch (max |diff| {worst:.2g})"))
    return worst


def export(result: SegmentationResult, out_path: str | PathLike[str], progress: ProgressFn | None = None) -> float:
    """Write the single-file ONNX with its card, check ONNX Runtime against torch; return the max difference."""
    model = result.model if result.novelty is None else WithFrameNovelty(result.model, result.novelty.head)
    return export_model(model, result.check_inputs, out_path, model_card(result), progress)
