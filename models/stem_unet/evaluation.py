"""stem-unet's evaluation: the torch model behind the service's recognizer interface, the tuning of the
post-processing and the card's held-out metrics on simulated frames never trained on."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from scanlens.models.scoring import (
    MATCH_FRACTION,
    atom_f1,
    defect_accuracy,
    evaluate_frame,
    low_dose_comparison,
    pooled,
)
from scanlens.models.scoring import simulated_frame as scoring_simulated_frame
from scanlens.pipeline import PostProcess, postprocess
from scanlens.sim.stem import SEG_CLASSES, STEMConfig

from .config import (
    HELDOUT_SEEDS,
    MODEL_PIXEL,
    NN_PX,
    PIXEL_NM,
    RESCALED_PIXEL_NM,
    RESCALED_SEEDS,
    Recipe,
    postprocess_spec,
)
from .network import STEMUNet

log = logging.getLogger(__name__)


class TorchSegmenter:
    """The torch model behind the same ``segment`` / ``pp`` / ``pixel_size`` the service's FrameRecognizer has."""

    def __init__(self, model: STEMUNet, spec: dict[str, Any]) -> None:
        self.model = model.eval()
        self.pp = PostProcess.from_card(list(SEG_CLASSES), spec)
        self.pixel_size = MODEL_PIXEL
        self.multiple = int(spec["size_multiple"])

    @torch.no_grad()
    def segment(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape
        m = self.multiple
        padded = np.pad(image, ((0, -h % m), (0, -w % m)), mode="reflect")
        probs = self.model(torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None])
        return probs[0, :, :h, :w].numpy()


def simulated_frame(seed: int, *, size: int = 512, dose: float | None = None,
                    pixel_size_nm: float = PIXEL_NM) -> tuple[np.ndarray, dict[str, np.ndarray], STEMConfig]:
    """(image, truth, config) of frame 0 of a default-condition movie at the model's pixel size by default."""
    return scoring_simulated_frame(seed, size=size, dose=dose, pixel_size_nm=pixel_size_nm)


def tune_postprocess(model: STEMUNet, frames: list[tuple[np.ndarray, dict[str, np.ndarray], STEMConfig]]
                     ) -> tuple[dict[str, Any], dict[str, float]]:
    """Pick ``threshold`` (best atom F1) then ``min_region_px`` (best defect F1 with the right class)."""
    seg = TorchSegmenter(model, postprocess_spec())
    probs = [seg.segment(img) for img, _, _ in frames]

    def score(spec: dict[str, Any]) -> tuple[float, float]:
        pp = PostProcess.from_card(list(SEG_CLASSES), spec)
        radius = MATCH_FRACTION * NN_PX
        atom, defect = [], []
        for p, (_, truth, _) in zip(probs, frames):
            _, atoms, defects = postprocess(p, pp)
            atom.append(atom_f1(atoms, truth["atoms"], radius))
            d = defect_accuracy(defects, truth["defects"], radius)
            defect.append(d["correct_recall"] * d["precision"])
        return float(np.mean(atom)), float(np.mean(defect))

    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    f1_at = {t: score(postprocess_spec(t))[0] for t in thresholds}
    best_t = max(thresholds, key=lambda t: (f1_at[t], -abs(t - 0.5)))
    regions = (4, 8, 12, 16, 20)
    defect = {r: score(postprocess_spec(best_t, r))[1] for r in regions}
    best_r = max(regions, key=lambda r: (defect[r], -abs(r - 8)))
    log.info("post-processing tuned: threshold %s (atom F1 %s), min_region_px %s (defect score %s)",
             best_t, f1_at, best_r, defect)
    return postprocess_spec(best_t, best_r), {"tuning_atom_f1": f1_at[best_t],
                                              "tuning_defect_score": defect[best_r]}


def heldout_metrics(model: STEMUNet, spec: dict[str, Any], recipe: Recipe) -> dict[str, float]:
    """The card's metrics, on frames with seeds never used in training or tuning."""
    seg = TorchSegmenter(model, spec)
    size = recipe.eval_size
    default = [evaluate_frame(seg, *simulated_frame(s, size=size)) for s in HELDOUT_SEEDS]
    out = {f"default_dose_{k}": v for k, v in pooled(default).items()}
    out["default_dose_atom_class_accuracy"] = float(np.mean([r.get("atom_class_accuracy", 0.0) for r in default]))

    # Low dose: the network against the classical baseline, threshold tuned at this dose on the tuning frames.
    low = low_dose_comparison(seg, size=size)
    out["low_dose"] = low["dose"]
    out["low_dose_atom_f1"] = low["atom_f1"]
    out["low_dose_classical_atom_f1"] = low["classical_atom_f1"]
    out["low_dose_classical_threshold_fraction"] = low["classical_threshold_fraction"]

    rescaled = [evaluate_frame(seg, *simulated_frame(s, size=size, pixel_size_nm=RESCALED_PIXEL_NM))
                for s in RESCALED_SEEDS]
    out["rescaled_pixel_size_nm"] = RESCALED_PIXEL_NM
    out["rescaled_atom_f1"] = pooled(rescaled)["atom_f1"]
    out["rescaled_defect_accuracy"] = pooled(rescaled)["defect_accuracy"]
    return {k: float(v) for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
