"""The ground-truth file of a BE-PFM scan: written by :class:`BEPFMSample`, read by :func:`load_ground_truth`."""

from __future__ import annotations

from os import PathLike
from typing import Any, Sequence

import numpy as np

from scanlens.protocol.messages import Axis

from .config import BEPFMConfig
from .oscillator import COMPONENTS
from .parameters import CLASSES, PARAM_NAMES


def write_ground_truth(
    path: str | PathLike[str], cfg: BEPFMConfig, *, label: np.ndarray, cell_id: np.ndarray, coverage: np.ndarray,
    params: dict[str, np.ndarray], class_names: Sequence[str] = CLASSES,
) -> None:
    """The file of :meth:`BEPFMSample.save_ground_truth`: the maps, names, axis and config ``cfg``.

    ``class_names`` are what ``label`` indexes: :data:`CLASSES`, or :data:`ALL_CLASSES` for a scan with
    spores."""
    np.savez_compressed(
        path,
        label=label,
        cell_id=cell_id,
        coverage=coverage,
        class_names=np.array(tuple(class_names)),
        components=np.array(COMPONENTS),
        axis=np.array(cfg.axis.model_dump_json()),
        config=np.array(cfg.to_json()),
        **{f"param_{k}": v for k, v in params.items()},
    )


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what ``BEPFMSample.save_ground_truth`` wrote: arrays, ``params`` (dict), ``axis`` and ``config``."""
    with np.load(path, allow_pickle=False) as data:
        return {
            "label": data["label"],
            "cell_id": data["cell_id"],
            "coverage": data["coverage"],
            "params": {k: data[f"param_{k}"] for k in PARAM_NAMES},
            "class_names": tuple(str(s) for s in data["class_names"]),
            "components": tuple(str(s) for s in data["components"]),
            "axis": Axis.model_validate_json(str(data["axis"])),
            "config": BEPFMConfig.from_json(str(data["config"])),
        }
