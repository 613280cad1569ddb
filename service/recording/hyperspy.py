"""The HyperSpy part of a recording: ``/Experiments/<name>`` groups that RosettaSciIO's ``hspy`` reader
(and so ``hyperspy.api.load``) opens as signals.

Laid out as RosettaSciIO 0.15 writes it (``rsciio/hspy/_api.py`` and ``rsciio/_hierarchical.py``): root
attributes ``file_format = "HyperSpy"`` and ``file_format_version``; per experiment a ``data`` dataset,
one ``axis-<i>`` group per dimension of ``data`` (in array order, navigation axes first) whose
attributes are the axis (``_type``, ``name``, ``units``, ``scale``, ``offset``, ``size``, ``navigate``,
``is_binned``), and ``metadata`` / ``original_metadata`` groups whose attributes are the metadata
tree. What goes where for scans and movies: ``docs/operations.md``, "Recording scans".
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from ..protocol.messages import ScanStart

#: the version of HyperSpy's file format that RosettaSciIO 0.15 writes (rsciio._hierarchical.version)
HSPY_FORMAT_VERSION = "3.3"

_SIGNAL_NAMES = {
    "Energy": ("meV", "eV", "keV"), "Frequency": ("Hz", "kHz", "MHz"), "Voltage": ("mV", "V"),
    "Field": ("mT", "T", "Oe", "kOe"),
}


def mark_file(f: h5py.File) -> None:
    """The root attributes by which the hspy reader knows the file."""
    f.attrs["file_format"] = "HyperSpy"
    f.attrs["file_format_version"] = HSPY_FORMAT_VERSION


def axis(name: str, units: str, size: int, scale: float, offset: float, navigate: bool) -> dict[str, Any]:
    """One ``axis-<i>`` group's attributes (a HyperSpy ``UniformDataAxis``)."""
    return {"_type": "UniformDataAxis", "name": name, "units": units, "size": int(size), "scale": float(scale),
            "offset": float(offset), "navigate": bool(navigate), "is_binned": False}


def signal_axis_name(modality: str, units: str) -> str:
    """A name for a spectral axis from its units: "Energy loss" for EELS, "Frequency", ... or "Signal"."""
    for name, units_of in _SIGNAL_NAMES.items():
        if units in units_of:
            return "Energy loss" if name == "Energy" and modality == "eels" else name
    return "Signal"


def spectrum_image_axes(start: ScanStart) -> list[dict[str, Any]]:
    """y (rows), x (columns) from ``scan_step`` (absent: 1 px), then the signal axis of ``scan_start.axis``."""
    rows, cols = start.shape
    step, units = (start.scan_step.size, start.scan_step.units) if start.scan_step else (1.0, "px")
    ax = start.axis
    assert ax is not None
    return [axis("y", units, rows, step, 0.0, True), axis("x", units, cols, step, 0.0, True),
            axis(signal_axis_name(start.modality, ax.units), ax.units, ax.size, ax.scale, ax.offset, False)]


def movie_axes(start: ScanStart, n_frames: int, first_frame: int) -> list[dict[str, Any]]:
    """time (``frame_interval_s``; without it: frame numbers), then the image's y and x in ``pixel_size``."""
    h, w = start.shape
    px = start.pixel_size
    assert px is not None
    dt = start.frame_interval_s
    time = (axis("time", "s", n_frames, dt, first_frame * dt, True) if dt is not None
            else axis("frame", "frame", n_frames, 1.0, float(first_frame), True))
    return [time, axis("y", px.units, h, px.size, 0.0, False), axis("x", px.units, w, px.size, 0.0, False)]


def chunks_for(shape: tuple[int, ...], itemsize: int, target: int = 4 * 2**20) -> tuple[int, ...]:
    """One chunk per scan row (per frame), split along the second axis if that is over ``target`` bytes:
    the recorder writes a line (a frame) at a time."""
    rest = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
    second = max(1, min(shape[1], target // max(rest, 1))) if len(shape) > 1 else 1
    return (1, second, *shape[2:])[:len(shape)] if all(shape) else None  # type: ignore[return-value]


def experiment(f: h5py.File, name: str, shape: tuple[int, ...], dtype: np.dtype, axes: list[dict[str, Any]], *,
               signal_type: str, original_metadata: dict[str, str]) -> h5py.Dataset:
    """``/Experiments/<name>`` with an empty ``data`` (NaN where nothing is written) and its axes and
    metadata; returns ``data`` for the caller to fill."""
    g = f.require_group("Experiments").create_group(name)
    data = g.create_dataset("data", shape=shape, dtype=dtype, chunks=chunks_for(shape, np.dtype(dtype).itemsize),
                            fillvalue=np.nan)
    for i, attrs in enumerate(axes):
        g.create_group(f"axis-{i}").attrs.update(attrs)
    meta = g.create_group("metadata")
    meta.create_group("General").attrs["title"] = name
    meta.create_group("Signal").attrs["signal_type"] = signal_type
    g.create_group("original_metadata").attrs.update(original_metadata)
    return data
