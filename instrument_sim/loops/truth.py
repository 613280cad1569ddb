"""The ground-truth file of a loop scan: written by :class:`LoopsSample`, read by :func:`load_ground_truth`."""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from scanlens.protocol.messages import Axis

from .config import COMPONENTS, PARAM_UNITS, PARAMS, LoopsConfig


def write_ground_truth(
    path: str | PathLike[str], cfg: LoopsConfig, params: dict[str, np.ndarray], region: np.ndarray
) -> None:
    """The file of :meth:`LoopsSample.save_ground_truth`: parameter maps ``params``, ``region``, names,
    components, axis and config ``cfg``."""
    np.savez_compressed(
        path,
        **{f"param_{k}": v for k, v in params.items()},
        region=region,
        param_names=np.array(PARAMS),
        param_units=np.array(PARAM_UNITS),
        components=np.array(COMPONENTS),
        axis=np.array(cfg.axis.model_dump_json()),
        config=np.array(cfg.to_json()),
    )


def load_ground_truth(path: str | PathLike[str]) -> dict[str, Any]:
    """Read what ``LoopsSample.save_ground_truth`` wrote: ``params`` (dict of maps), ``region``, names, ``axis``, ``config``."""
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(s) for s in data["param_names"])
        return {
            "params": {k: data[f"param_{k}"] for k in names},
            "region": data["region"],
            "param_names": names,
            "param_units": tuple(str(s) for s in data["param_units"]),
            "components": tuple(str(s) for s in data["components"]),
            "axis": Axis.model_validate_json(str(data["axis"])),
            "config": LoopsConfig.from_json(str(data["config"])),
        }
