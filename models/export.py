"""Shared plumbing for every recognizer: ONNX export with the model card, torch/ORT parity check, ORT sessions.

Torch is imported only inside :func:`export_with_card`, so reading cards and opening sessions works
in a torch-free install (the service's environment).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import warnings
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from scanlens.pipeline import session_options
from scanlens.protocol.model_card import CARD_KEY, ModelCard, card_from_metadata

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Largest acceptable difference between torch and ONNX Runtime outputs on the same inputs.
PARITY_ATOL = 1e-4


class ParityError(RuntimeError):
    """ONNX Runtime does not reproduce the torch model's outputs."""


def make_session(model: str | PathLike[str] | bytes, *, threads: int = 2) -> ort.InferenceSession:
    """An ONNX Runtime CPU session configured exactly as the service configures its own."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def read_card(model: str | PathLike[str] | onnx.ModelProto) -> ModelCard:
    """The model card stored under ``CARD_KEY`` in an ONNX file's metadata."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return card_from_metadata({p.key: p.value for p in proto.metadata_props})


def set_card(proto: onnx.ModelProto, card: ModelCard) -> None:
    """Store ``card`` as JSON under ``CARD_KEY``, keeping any other metadata."""
    props = {p.key: p.value for p in proto.metadata_props}
    props[CARD_KEY] = card.model_dump_json()
    onnx.helper.set_model_props(proto, props)


def check_parity(
    session: ort.InferenceSession,
    expected: Mapping[str, np.ndarray],
    feeds: Mapping[str, np.ndarray],
    *,
    atol: float = PARITY_ATOL,
) -> float:
    """Run ``session`` on ``feeds`` and compare each named output with ``expected``; return the max
    difference, each element's scaled by ``max(1, |torch value|)``: outputs are float32, so a large value
    (a novelty score far above its threshold, say) is compared relative to its size, a small one absolutely."""
    names = list(expected)
    got = session.run(names, dict(feeds))
    worst = 0.0
    for name, ref, out in zip(names, expected.values(), got):
        if out.shape != ref.shape:
            raise ParityError(f"output {name!r}: ONNX shape {out.shape} != torch shape {ref.shape}")
        r = ref.astype(np.float64)
        diff = float(np.max(np.abs(out.astype(np.float64) - r) / np.maximum(1.0, np.abs(r)))) if ref.size else 0.0
        worst = max(worst, diff)
        if not diff < atol:
            raise ParityError(f"output {name!r}: ONNX Runtime differs from torch by {diff:.3g} "
                              f"(limit {atol:g}, relative above 1)")
    return worst


def export_onnx_file(model: torch.nn.Module, example: torch.Tensor, path: str | PathLike[str], card: ModelCard, *,
                     output_names: Sequence[str], dynamic_shapes: tuple[dict[int, Any], ...]) -> Path:
    """Export a single-input module with the current exporter (dynamo, one file) and ``card`` in its
    metadata; ``dynamic_shapes`` says which input dimensions may vary. Returns the written path."""
    import torch

    noisy = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed" on every export
    old_level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[card.input.name],
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    finally:
        noisy.setLevel(old_level)
    for w in caught:
        log.debug("torch.onnx.export: %s", w.message)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    set_card(proto, card)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    log.info("exported %s (%d bytes)", path, path.stat().st_size)
    return path


def export_with_card(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | PathLike[str],
    card: ModelCard,
    *,
    output_names: Sequence[str],
    check_inputs: np.ndarray | None = None,
    atol: float = PARITY_ATOL,
) -> float:
    """Export a single-input module (batch dim dynamic) to one ONNX file with ``card`` in its metadata.

    The input is named ``card.input.name``. After saving, ONNX Runtime runs the file on
    ``check_inputs`` (default: ``example``) and must match torch within ``atol``, else
    :class:`ParityError`. Returns the largest difference seen.
    """
    import torch

    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    path = export_onnx_file(model, example, path, card, output_names=output_names, dynamic_shapes=({0: batch},))

    inputs = example.detach().cpu().numpy() if check_inputs is None else np.asarray(check_inputs, np.float32)
    with torch.no_grad():
        outs = model(torch.from_numpy(np.ascontiguousarray(inputs)))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    expected = {name: t.detach().cpu().numpy() for name, t in zip(output_names, outs)}
    diff = check_parity(make_session(path), expected, {card.input.name: inputs}, atol=atol)
    log.info("ONNX Runtime matches torch: max |diff| = %.3g", diff)
    return diff


# --------------------------------------------------------------------------- training progress


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: ``stage`` is "data", "train" or "export"; ``step`` of ``total`` done."""

    stage: str
    step: int
    total: int
    loss: float | None = None
    message: str = ""


ProgressFn = Callable[[TrainProgress], None]


def emit(progress: ProgressFn | None, event: TrainProgress) -> None:
    """Log a progress event and pass it to the caller's callback, if any."""
    log.info("%s %d/%d loss=%s %s", event.stage, event.step, event.total, event.loss, event.message)
    if progress is not None:
        progress(event)


def export_reporting(model: torch.nn.Module, check_inputs: np.ndarray, out_path: str | PathLike[str],
                     card: ModelCard, output_names: Sequence[str], progress: ProgressFn | None = None) -> float:
    """``export_with_card`` with progress events; returns the largest ONNX-vs-torch difference."""
    import torch

    emit(progress, TrainProgress("export", 0, 1, message=f"exporting to {out_path}"))
    diff = export_with_card(model, torch.from_numpy(check_inputs[:16]), Path(out_path), card,
                            output_names=output_names, check_inputs=check_inputs)
    emit(progress, TrainProgress("export", 1, 1, message=f"ONNX Runtime matches torch (max |diff| {diff:.2g})"))
    return diff
