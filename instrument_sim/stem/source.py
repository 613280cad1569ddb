"""What the streaming simulator plays (:class:`STEMSource`) and single training frames (:func:`training_pair`)."""

from __future__ import annotations

from functools import lru_cache
from os import PathLike
from typing import Any

import numpy as np

from .config import ATOM_CLASSES, DEFECT_CLASSES, SEG_CLASSES, STEMConfig, nearest_neighbour_spacing_px
from .movie import STEMMovie


@lru_cache(maxsize=8)
def _cached_movie(cfg: STEMConfig) -> STEMMovie:
    return STEMMovie(cfg)


def training_pair(cfg: STEMConfig, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy image float32, labels uint8) of frame ``i`` of the movie ``cfg`` describes.

    For independent single frames vary ``cfg.seed`` (new rotation, origin, defects, drift) and take
    ``i = 0``; the last few movies are cached, so frames of one movie are cheap to draw one by one.
    """
    movie = _cached_movie(cfg)
    return movie.frame(i), movie.truth(i)["labels"]


class STEMSource:
    """What the streaming simulator plays: a HAADF movie of a WS2 (or graphene) layer with moving defects."""

    modality = "haadf"

    def __init__(self, cfg: STEMConfig = STEMConfig()) -> None:
        self.cfg = cfg
        self.movie = STEMMovie(cfg)
        self.shape: tuple[int, int] = (cfg.size, cfg.size)
        self.frames: int = cfg.frames
        self.pixel_size_nm: float = cfg.pixel_size_nm
        self.meta: dict[str, Any] = {
            "simulator": "instrument_sim.stem",
            "lattice": cfg.lattice,
            "lattice_constant_nm": cfg.spec.a_nm,
            "nn_spacing_px": nearest_neighbour_spacing_px(cfg),
            "seg_classes": list(SEG_CLASSES),
            "atom_classes": list(ATOM_CLASSES),
            "defect_classes": list(DEFECT_CLASSES),
            "seed": cfg.seed,
            "pixel_size_nm": cfg.pixel_size_nm,
            "dose": cfg.dose,
            "blur_fwhm_nm": cfg.blur_fwhm_nm,
            "frames": cfg.frames,
        }

    def frame(self, i: int) -> np.ndarray:
        return self.movie.frame(i)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        self.movie.save_ground_truth(path)
