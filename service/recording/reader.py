"""Reading a recording back (torch-free, no service needed): ``open_recording(path) -> Recording``.

    with open_recording("runs/s1.h5") as rec:
        rec.scan_start                 # the ScanStart as received
        for m in rec.messages():       # ScanStart, Data / Frame (with their arrays), ScanEnd, in received order
            m.header, m.arrays, m.t_received, m.accepted
        rec.maps("eels-mlp")           # {"class": [rows, cols], ..., "filled": [rows, cols]} as published
        rec.summary, rec.events, rec.recognizers

The layout it reads is ``layout.py``'s (``docs/operations.md``, "Recording scans"); a replay tool sends
``messages()`` to a service again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..protocol.codec import Limits, decode, validate_tolerant, wire_dtype
from ..protocol.messages import Data, Event, Frame, ScanEnd, ScanStart, ScanStarted, ScanSummary
from .journal import read_records
from .layout import FORMAT


@dataclass(frozen=True)
class RecordedMessage:
    """One ingest message as the service received it: its header, its arrays, when (Unix time, s) and
    whether the service accepted it (a refused message's bytes are replayed as they came)."""

    header: ScanStart | Data | Frame | ScanEnd
    arrays: list[np.ndarray]
    t_received: float
    accepted: bool = True


class Recording:
    """An open recording (an ``.h5`` file written by the recorder); close it, or use it as a context."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.file = h5py.File(self.path, "r")
        g = self.file.get("scanlens")
        if g is None or g.attrs.get("format") != FORMAT:
            self.file.close()
            raise ValueError(f"{self.path} is not a scanlens recording (no /scanlens group of format {FORMAT})")
        self.group = g
        a = g.attrs
        self.scan_id: str = a["scan_id"]
        self.scan_start = ScanStart.model_validate_json(a["scan_start"])
        self.started = validate_tolerant(ScanStarted, json.loads(a["scan_started"])) if "scan_started" in a else None
        self.summary = validate_tolerant(ScanSummary, json.loads(a["summary"]))
        #: the summary's state, or ``recovered`` (the service died before the summary)
        self.state: str = a["state"]
        #: "complete", or "stopped" (``stopped_reason`` says why: disk error, budget)
        self.recording: str = a["recording"]
        self.stopped_reason: str = a["stopped_reason"]
        self.events = [validate_tolerant(Event, {k: v for k, v in json.loads(line).items() if k != "t"})
                       for line in g["events"].asstr()[()]]
        self.recognizers = {name: {k: _attr(v) for k, v in grp.attrs.items()}
                            for name, grp in g.get("recognizers", {}).items()}
        self.experiments: list[str] = json.loads(a["experiments"])

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def received(self) -> np.ndarray:
        """uint8 ``[rows, cols]`` (a movie: ``[frames]``): 1 where data arrived."""
        return self.group["received"][()]

    def data(self) -> np.ndarray:
        """The raw data: ``[rows, cols, channels]`` (``[..., components]`` with components) or
        ``[frames, height, width]``; NaN where nothing arrived."""
        cubes = [self.file[f"Experiments/{name}/data"][()] for name in self.experiments]
        return cubes[0] if len(cubes) == 1 and not self.scan_start.components else np.stack(cubes, axis=-1)

    def maps(self, recognizer: str) -> dict[str, np.ndarray]:
        """What the service published for ``recognizer``, assembled: ``[rows, cols, ...]`` maps and
        ``filled`` (spectra), or per frame ``classes`` ``[frames, h, w]``, ``atoms`` / ``defects`` (the frame
        index first, then the published columns) and ``filled`` ``[frames]`` (movies)."""
        group = self.group.get(f"maps/{recognizer}")
        if group is None:
            raise KeyError(f"no maps of {recognizer!r} in {self.path}; recorded: {sorted(self.group.get('maps', {}))}")
        return {name: ds[()] for name, ds in group.items()}

    @property
    def n_data_messages(self) -> int:
        """How many data (frame) messages were received, refused ones included."""
        return len(self.group["messages"]["seq"])

    def messages(self) -> Iterator[RecordedMessage]:
        """The ingest messages, in the order received: scan_start, every data (frame) message, scan_end."""
        a, g = self.group.attrs, self.group
        yield RecordedMessage(self.scan_start, [], float(a.get("t_start", 0.0)))
        cols = {name: ds[()] for name, ds in g["messages"].items()}
        dtypes = json.loads(g["messages"].attrs["dtypes"])
        data = [self.file[f"Experiments/{name}/data"] for name in self.experiments]
        first_frame = int(a.get("first_frame", 0))
        sid, comps = self.scan_id, self.scan_start.components
        for i in range(len(cols["seq"])):
            t, ok = float(cols["t_received"][i]), bool(cols["accepted"][i])
            if not ok:
                kept = g.get(f"rejected/{i}")
                if kept is not None:
                    header = json.loads(kept.attrs["header"])
                    model = Frame if header.get("kind") == "frame" else Data
                    buffers = [kept[f"buffer_{k}"][()] for k in range(len(kept))]
                    yield RecordedMessage(model.model_validate(header), buffers, t, accepted=False)
                continue
            dtype = dtypes[cols["dtype"][i]]
            t_ns = int(cols["t_ns"][i])
            extra = {"t_ns": t_ns} if t_ns >= 0 else {}
            if self.scan_start.imaging:
                frame = int(cols["frame"][i])
                image = data[0][frame - first_frame].astype(wire_dtype(dtype))
                yield RecordedMessage(Frame(scan_id=sid, seq=int(cols["seq"][i]), frame=frame, shape=image.shape,
                                            dtype=dtype, **extra), [image], t)
                continue
            row, col0, n = int(cols["row"][i]), int(cols["col0"][i]), int(cols["n_pixels"][i])
            parts = [cube[row, col0:col0 + n] for cube in data]
            values = (np.stack(parts, axis=-1) if comps else parts[0]).astype(wire_dtype(dtype))
            yield RecordedMessage(Data(scan_id=sid, seq=int(cols["seq"][i]), row=row, col0=col0, shape=values.shape,
                                       dtype=dtype, **extra), [values], t)
        if "scan_end" in a:
            end = json.loads(a["scan_end"])
            t = end.pop("t_received")
            yield RecordedMessage(ScanEnd.model_validate(end), [], float(t))


def _attr(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def open_recording(path: Path | str) -> Recording:
    """The recording at ``path``; ValueError if it is not one."""
    return Recording(path)


def received_data(journal: Path | str) -> Iterator[tuple[Data, list[memoryview]]]:
    """The accepted ``data`` messages of a journal (an open scan's too: it stops at the last complete record),
    each as its header and buffers, in the order received: what live training reads back from a recorded scan
    that did not ask for ``retain`` (docs/live-training.md)."""
    accepted = Limits(max_payload_bytes=1 << 40)  # the service took it under its own limits
    for record in read_records(journal):
        if record.meta.get("dir") != "in" or not record.meta.get("ok") or not record.frames or len(record.frames) < 2:
            continue
        try:
            header, buffers = decode(record.frames, accepted)  # the wire frames: header, buffers
        except Exception:  # noqa: BLE001 - it was accepted, so it decodes; a record that does not is skipped
            continue
        if isinstance(header, Data) and header.slot is None:
            yield header, buffers

