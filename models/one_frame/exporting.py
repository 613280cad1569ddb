"""one-frame-unet's card and ONNX file: the model card of a network trained on one frame, and
:func:`train_one_frame`, which trains and exports it (what ``scanlens train one-frame`` runs)."""

from __future__ import annotations

import re
from os import PathLike

import numpy as np

from scanlens.models.export import ProgressFn
from scanlens.models.novelty import novelty_output
from scanlens.models.stem_unet import INPUT_NAME, MODALITY, NORMALIZATION, OUTPUT_NAMES, architecture, export_model
from scanlens.protocol.messages import PixelSize
from scanlens.protocol.model_card import InputSpec, ModelCard, OutputSpec
from scanlens.sim.stem import SEG_CLASSES

from .config import NAME, STEPS, VERSION
from .fitting import OneFrameResult, fit_one_frame

_NAME_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def check_name(name: str) -> None:
    """ValueError unless ``name`` is a valid card name (what the service and ``--recognizer`` know a model by)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name must be 1-64 characters of A-Z a-z 0-9 . _ -, got {name!r}")


def model_card(result: OneFrameResult, name: str = NAME, description: str | None = None, *,
               modality: str = MODALITY, version: str = VERSION) -> ModelCard:
    """The card stored in the ONNX file's metadata; with ``result.novelty`` (``models.live``) it declares the
    frame novelty output and its threshold, as stem-unet's card does."""
    src = result.training["source"]
    h, w = src["image_shape"]
    description = description or (
        f"Atom columns and point defects in atomic-resolution HAADF STEM frames at {result.pixel_size_nm:g} nm per "
        f"pixel, learned from one labelled {h} x {w} frame (nearest-neighbour spacing {src['nn_spacing_px']:.2f} px): "
        "per-pixel class probabilities, turned into sub-pixel atom coordinates, a defect list and defect tracks "
        "by the service's post-processing. Meant for the rest of the movie that frame came from; its metrics are "
        "measured on the training frame itself."
    )
    outputs = [OutputSpec(name=OUTPUT_NAMES[0], role="segmentation", labels=list(SEG_CLASSES),
                          description="softmax over SEG_CLASSES per pixel, [n, 7, h, w]")]
    if result.novelty is not None:
        outputs.append(novelty_output("one score per frame, [n]: distance of the frame's deepest U-Net features "
                                      "from those of crops of the training frame"))
    return ModelCard(
        name=name,
        version=version,
        modality=modality,
        description=description,
        architecture=architecture(),
        input=InputSpec(name=INPUT_NAME, pixel_size=PixelSize(size=result.pixel_size_nm, units="nm"),
                        normalization=NORMALIZATION),
        outputs=outputs,
        training=result.training,
        metrics=result.metrics,
        postprocess=result.postprocess,
        novelty=None if result.novelty is None else result.novelty.spec(),
    )


def train_one_frame(
    image: np.ndarray,
    labels: np.ndarray,
    pixel_size_nm: float,
    out_path: str | PathLike[str],
    *,
    name: str = NAME,
    steps: int = STEPS,
    seed: int = 0,
    progress: ProgressFn | None = None,
    description: str | None = None,
    threads: int = 2,
) -> dict[str, float]:
    """Train on one labelled frame, export the network with its card to ``out_path`` (one ONNX file, checked
    against torch in ONNX Runtime) and return the training-frame metrics plus ``onnx_max_abs_diff``.

    ``image``: 2-D frame (raw counts ideally; at least 64 x 64 px); ``labels``: same shape, SEG_CLASSES
    indices (0 background, 1 metal, 2 chalcogen, 3 metal_vacancy, 4 chalcogen_vacancy, 5 dopant, 6 adatom);
    ``pixel_size_nm``: the frame's pixel size, which becomes the model's; ``name``: the card's name, which
    the service and ``--recognizer`` know the model by. Invalid inputs raise ValueError before training.
    """
    check_name(name)
    result = fit_one_frame(image, labels, pixel_size_nm, steps=steps, seed=seed, progress=progress, threads=threads)
    diff = export_model(result.model, result.check_inputs, out_path, model_card(result, name, description), progress)
    return {**result.metrics, "onnx_max_abs_diff": diff}
