"""The ground-truth file of a spectrum image: written by :class:`EELSSample`, read by :func:`load_ground_truth`."""

from __future__ import annotations

from os import PathLike
from typing import Any, Sequence

import numpy as np

from scanlens.protocol.messages import Axis

from .config import EELSConfig
from .spectra import SAMPLE_PHASES, UNKNOWN_PHASE


def write_ground_truth(
    path: str | PathLike[str], cfg: EELSConfig, *, phase: np.ndarray, abundance: np.ndarray, unknown: np.ndarray,
    shift_eV: np.ndarray, phase_names: Sequence[str] | None = None,
) -> None:
    """The file of :meth:`EELSSample.save_ground_truth`: the maps, names, axis, energy shift and config ``cfg``.

    ``phase_names`` (what ``phase`` indexes and ``abundance``'s last axis holds) default to the phases of
    ``cfg.sample``; the file stores them, so a reader needs no simulator to name the classes."""
    np.savez_compressed(
        path,
        phase=phase,
        abundance=abundance,
        unknown=unknown,
        unknown_phase=np.array(UNKNOWN_PHASE),
        phase_names=np.array(SAMPLE_PHASES[cfg.sample] if phase_names is None else tuple(phase_names)),
        axis=np.array(cfg.axis.model_dump_json()),
        shift_eV=shift_eV,
        config=np.array(cfg.to_json()),
    )


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what ``EELSSample.save_ground_truth`` wrote: arrays plus ``axis`` (Axis) and ``config`` (EELSConfig).

    ``unknown`` (float32 ``[rows, cols]``) is zeros for files written before the unknown region existed.
    """
    with np.load(path, allow_pickle=False) as data:
        phase = data["phase"]
        return {
            "phase": phase,
            "abundance": data["abundance"],
            "unknown": data["unknown"] if "unknown" in data.files else np.zeros(phase.shape, np.float32),
            "unknown_phase": str(data["unknown_phase"]) if "unknown_phase" in data.files else UNKNOWN_PHASE,
            "phase_names": tuple(str(s) for s in data["phase_names"]),
            "axis": Axis.model_validate_json(str(data["axis"])),
            "shift_eV": data["shift_eV"],
            "config": EELSConfig.from_json(str(data["config"])),
        }
