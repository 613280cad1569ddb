"""One journal's records -> one HDF5 file: the HyperSpy experiments and the ``/scanlens`` group.

``Builder`` takes the records of a journal one at a time, in order (``journal.read_records``), and
writes them into an open ``h5py.File`` as they come, so a scan of any size is converted in bounded
memory. The layout (``docs/operations.md``, "Recording scans", has the full table):

* ``/Experiments/<scan_id>/data`` — the raw data as received (``hyperspy.py``): ``[rows, cols, channels]``
  per component of a spectral scan (``/Experiments/<scan_id>.<component>`` when it has components), or
  ``[frames, height, width]`` for a movie; NaN where nothing arrived.
* ``/scanlens`` — attributes ``scan_start``, ``scan_started``, ``scan_end``, ``summary`` (JSON), ``state``;
  ``received`` (uint8 mask of the pixels or frames received), ``messages/*`` (one entry per data or frame
  message, in received order), ``rejected/<i>`` (refused messages as received), ``maps/<recognizer>/*``
  (what the service published, assembled), ``published/<recognizer>/*`` (one entry per publication),
  ``events`` (JSON lines), ``recognizers/<name>`` (model identity).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from typing import Any

import h5py
import msgpack
import numpy as np

from .. import __version__
from ..protocol.codec import arrays_from, buffer_to_array, validate_header
from ..protocol.messages import ScanStart
from . import hyperspy
from .journal import Record

#: the format of the ``/scanlens`` group (``format`` attribute), and its version
FORMAT, FORMAT_VERSION = "scanlens-recording", 1
#: refused messages whose bytes are kept (the rest are only listed in ``messages``)
KEEP_REJECTED = 4096
#: state of a scan whose summary never made it into the journal (the service died first)
RECOVERED = "recovered"

_DTYPE_CODES = ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


def storage_dtype(dtypes: set[str]) -> np.dtype:
    """The float type the raw data is kept in: one that holds every received value exactly and NaN for
    what never arrived (float64 for 32-bit integers and float64 data, float32 otherwise)."""
    return np.dtype("<f8") if dtypes & {"float64", "int32", "uint32"} else np.dtype("<f4")


def fill_value(dtype: np.dtype) -> Any:
    return np.nan if np.dtype(dtype).kind == "f" else 0


def dump(header: Any) -> dict[str, Any]:
    return header.model_dump(mode="json", exclude_none=True)


@dataclass
class Survey:
    """What a first pass over a journal tells before anything is written (``convert.survey``)."""

    recording_id: str
    start: ScanStart | None = None
    info: dict[str, Any] = field(default_factory=dict)
    dtypes: set[str] = field(default_factory=set)
    first_frame: int | None = None
    last_frame: int | None = None


class Builder:
    """Writes a recording into ``f`` record by record; ``finish`` completes it."""

    def __init__(self, f: h5py.File, survey: Survey):
        assert survey.start is not None
        self.f, self.start = f, survey.start
        self.survey = survey
        self.g = f.create_group("scanlens")
        self.imaging = self.start.imaging
        self.dtype = storage_dtype(survey.dtypes)
        self.cols: dict[str, array] = {k: array(t) for k, t in (
            ("seq", "q"), ("row", "q"), ("col0", "q"), ("n_pixels", "q"), ("frame", "q"), ("t_received", "d"),
            ("t_ns", "q"), ("accepted", "B"), ("dtype", "B"))}
        self.published: dict[str, dict[str, array]] = {}
        self.maps: dict[str, dict[str, h5py.Dataset]] = {}
        self.filled: dict[str, np.ndarray] = {}
        self.ragged: dict[str, dict[str, list[np.ndarray]]] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []
        self.attrs: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.tracking: dict[str, Any] = {}
        self.n_rejected = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        hyperspy.mark_file(f)
        self._experiments()

    # ------------------------------------------------------------------ the raw data

    def _experiments(self) -> None:
        s, sid = self.start, self.start.scan_id
        original = {"scan_start": json.dumps(dump(s))}
        if self.imaging:
            first, last = self.survey.first_frame, self.survey.last_frame
            self.first_frame = first if first is not None else 0
            self.attrs["first_frame"] = self.first_frame
            n = 0 if first is None or last is None else last - first + 1
            self.received = np.zeros(n, np.uint8)
            self.cubes = [hyperspy.experiment(self.f, sid, (n, *s.shape), self.dtype,
                                              hyperspy.movie_axes(s, n, self.first_frame), signal_type="",
                                              original_metadata=original)]
            names = [sid]
        else:
            rows, cols = s.shape
            self.received = np.zeros((rows, cols), np.uint8)
            names = [sid] if not s.components else [f"{sid}.{c}" for c in s.components]
            self.cubes = [hyperspy.experiment(self.f, name, (rows, cols, s.axis.size), self.dtype,
                                              hyperspy.spectrum_image_axes(s),
                                              signal_type="EELS" if s.modality == "eels" else "",
                                              original_metadata=original) for name in names]
        self.attrs["experiments"] = json.dumps(names)

    def _message(self, header: Any, t: float, ok: bool, frames: list[bytes]) -> None:
        c, imaging = self.cols, header.kind == "frame"
        for name, value in (("seq", header.seq), ("row", -1 if imaging else header.row),
                            ("col0", -1 if imaging else header.col0),
                            ("n_pixels", header.shape[0] * header.shape[1] if imaging else header.shape[0]),
                            ("frame", header.frame if imaging else -1), ("t_received", t),
                            ("t_ns", header.t_ns if header.t_ns is not None and 0 <= header.t_ns < 2**63 else -1),
                            ("accepted", int(ok)),
                            ("dtype", _DTYPE_CODES.index(header.dtype))):
            c[name].append(value)
        if ok:
            try:
                values = buffer_to_array(frames[1], header.dtype, header.shape) if len(frames) == 2 else None
                if values is None:
                    raise ValueError("not one buffer")
                self._place(header, values)
                return
            except (ValueError, IndexError, TypeError):  # accepted, yet does not fit: keep it as received
                c["accepted"][-1] = 0
        self._keep_rejected(len(c["seq"]) - 1, frames)

    def _place(self, header: Any, values: np.ndarray) -> None:
        if header.kind == "frame":
            i = header.frame - self.first_frame
            if not self.imaging or not 0 <= i < len(self.received):
                raise IndexError("outside the movie")
            self.cubes[0][i] = values.astype(self.dtype, copy=False)
            self.received[i] = 1
            return
        n = header.shape[0]
        if self.imaging or header.row >= self.received.shape[0] or header.col0 + n > self.received.shape[1]:
            raise IndexError("outside the scan")
        sl = (header.row, slice(header.col0, header.col0 + n))
        if len(self.cubes) == 1 and values.ndim == 2:
            self.cubes[0][sl] = values.astype(self.dtype, copy=False)
        else:
            for k, cube in enumerate(self.cubes):
                cube[sl] = values[..., k].astype(self.dtype)
        self.received[sl] = 1

    def _keep_rejected(self, index: int, frames: list[bytes]) -> None:
        if self.n_rejected >= KEEP_REJECTED:
            return
        self.n_rejected += 1
        g = self.g.require_group("rejected").create_group(str(index))
        g.attrs["header"] = json.dumps(msgpack.unpackb(frames[0], raw=False))
        for i, buf in enumerate(frames[1:]):
            g.create_dataset(f"buffer_{i}", data=np.frombuffer(buf, np.uint8))

    # ------------------------------------------------------------------ records

    def add(self, record: Record) -> None:
        """One journal record."""
        meta, frames = record.meta, record.frames or []
        direction = meta.get("dir")
        if direction == "info":
            return
        try:
            header = validate_header(msgpack.unpackb(frames[0], raw=False), tolerant=True)
        except Exception:  # noqa: BLE001 - a kind this version does not know, or no header: nothing to place
            return
        t = float(meta.get("t", 0.0))
        self.t_first = t if self.t_first is None else self.t_first
        self.t_last = t
        kind = header.kind
        if direction == "in":
            if kind in ("data", "frame"):
                self._message(header, t, bool(meta.get("ok", True)), frames)
            elif kind == "scan_start":
                self.attrs["t_start"] = t
            elif kind == "scan_end":
                self.attrs["scan_end"] = json.dumps({**dump(header), "t_received": t})
        elif kind == "scan_started":
            self.attrs["scan_started"] = json.dumps(dump(header))
        elif kind == "maps":
            self._maps(header, frames[1:])
        elif kind == "frame_result":
            self._frame_result(header, frames[1:])
        elif kind == "event":
            self.events.append(json.dumps({**dump(header), "t": t}))
        elif kind == "scan_summary":
            self.summary = dump(header)

    def _table(self, rec: str, **values: float) -> None:
        table = self.published.setdefault(rec, {k: array("d") for k in values})
        for k, v in values.items():
            table[k].append(v)

    def _dataset(self, rec: str, name: str, shape: tuple[int, ...], spec: Any) -> h5py.Dataset:
        ds = self.maps.setdefault(rec, {}).get(name)
        if ds is None:
            dtype = np.dtype(spec.dtype)
            group = self.g.require_group(f"maps/{rec}")
            ds = group.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill_value(dtype),
                                      chunks=hyperspy.chunks_for(shape, dtype.itemsize))
            for key in ("labels", "units"):
                if getattr(spec, key):
                    ds.attrs[key] = json.dumps(getattr(spec, key))
            self.maps[rec][name] = ds
        return ds

    def _maps(self, header: Any, buffers: list[bytes]) -> None:
        rec, rows, cols = header.recognizer, *self.start.shape
        if self.imaging:
            return
        sl = (header.row, slice(header.col0, header.col0 + header.n_pixels))
        for spec, values in zip(header.arrays, arrays_from(header.arrays, buffers).values()):
            self._dataset(rec, spec.name, (rows, cols, *values.shape[1:]), spec)[sl] = values
        self.filled.setdefault(rec, np.zeros((rows, cols), np.uint8))[sl] = 1
        self._table(rec, seq=header.seq, row=header.row, col0=header.col0, n_pixels=header.n_pixels,
                    latency_ms=header.latency_ms)

    def _frame_result(self, header: Any, buffers: list[bytes]) -> None:
        rec, n = header.recognizer, len(self.received)
        if not self.imaging or not 0 <= header.frame - self.first_frame < n:
            return
        i = header.frame - self.first_frame
        for spec, values in zip(header.arrays, arrays_from(header.arrays, buffers).values()):
            if values.shape == tuple(self.start.shape):  # a per-pixel image: indexed by frame
                self._dataset(rec, spec.name, (n, *values.shape), spec)[i] = values
            elif values.ndim == 2:  # a list (atoms, defects): concatenated, with the frame first
                rows = np.column_stack([np.full(len(values), header.frame, values.dtype), values])
                self.ragged.setdefault(rec, {}).setdefault(spec.name, []).append(rows)
                self.specs.setdefault(rec, {})[spec.name] = spec
        self.filled.setdefault(rec, np.zeros(n, np.uint8))[i] = 1
        if header.tracking is not None:
            self.tracking[rec] = header.tracking
        self._table(rec, seq=header.seq, frame=header.frame, latency_ms=header.latency_ms, n_atoms=header.n_atoms,
                    n_defects=header.n_defects, novelty=np.nan if header.novelty is None else header.novelty,
                    novel=-1 if header.novel is None else int(header.novel))

    # ------------------------------------------------------------------ finishing

    def finish(self, *, summary: dict[str, Any] | None = None, stopped: str | None = None) -> str:
        """Write what was gathered; returns the scan's state (its summary's, or ``recovered``).
        ``summary``: the scan's summary when it is not in the journal (recording stopped before it);
        ``stopped``: why recording stopped early (``recording_stopped``), None if it did not."""
        g = self.g
        if summary is not None and self.summary is None:
            self.summary = summary
        source = "service"
        if self.summary is None:
            self.summary, source = self._recovered_summary(), "journal"
        g.create_dataset("received", data=self.received)
        for name, values in self.cols.items():
            dtype = {"q": "<i8", "d": "<f8", "B": "u1"}[values.typecode]
            g.create_dataset(f"messages/{name}", data=np.frombuffer(values, dtype) if len(values) else
                             np.zeros(0, dtype))
        g["messages"].attrs["dtypes"] = json.dumps(_DTYPE_CODES)
        for rec, table in self.published.items():
            for name, values in table.items():
                g.create_dataset(f"published/{rec}/{name}", data=np.frombuffer(values, "<f8"))
        for rec, filled in self.filled.items():
            g.create_dataset(f"maps/{rec}/filled", data=filled)
        for rec, lists in self.ragged.items():
            for name, parts in lists.items():
                ds = g.create_dataset(f"maps/{rec}/{name}", data=np.concatenate(parts))
                spec = self.specs[rec][name]
                ds.attrs["labels"] = json.dumps(["frame", *(spec.labels or [])])
                if spec.units:
                    ds.attrs["units"] = json.dumps(["", *spec.units])
        for rec, tracking in self.tracking.items():
            g.require_group(f"maps/{rec}").attrs["tracking"] = json.dumps(tracking)
        g.create_dataset("events", data=np.array(self.events, dtype=object), dtype=h5py.string_dtype())
        self._identities()
        state = self.summary.get("state", RECOVERED) if source == "service" else RECOVERED
        g.attrs.update({**self.attrs, "format": FORMAT, "format_version": FORMAT_VERSION,
                        "recording_id": self.survey.recording_id, "scan_id": self.start.scan_id,
                        "scan_start": json.dumps(dump(self.start)), "summary": json.dumps(self.summary),
                        "summary_source": source, "state": state, "recording": "stopped" if stopped else "complete",
                        "stopped_reason": stopped or "", "kind": "frames" if self.imaging else "spectra",
                        "service_version": str(self.survey.info.get("service", "")), "converted_by": __version__})
        return state

    def _identities(self) -> None:
        known = self.survey.info.get("recognizers", {})
        started = json.loads(self.attrs.get("scan_started", "{}")).get("recognizers")
        for name in started if started is not None else list(known):
            ident = known.get(name, {"name": name})
            g = self.g.require_group(f"recognizers/{name}")
            for key, value in ident.items():
                g.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else (
                    "" if value is None else value)

    def _recovered_summary(self) -> dict[str, Any]:
        """A summary from what the journal holds, for a scan whose real summary never came (state
        ``recovered``): what was received and recognized until the journal ends; nothing is counted lost."""
        ok = np.frombuffer(self.cols["accepted"], np.uint8).astype(bool) if len(self.cols["accepted"]) else \
            np.zeros(0, bool)
        pixels = (self.received.sum() * int(np.prod(self.start.shape)) if self.imaging
                  else int(self.received.sum()))
        per_rec = {rec: int(f.sum()) * (int(np.prod(self.start.shape)) if self.imaging else 1)
                   for rec, f in self.filled.items()}
        seqs = np.frombuffer(self.cols["seq"], "<i8") if len(self.cols["seq"]) else np.zeros(0, "<i8")
        end = json.loads(self.attrs["scan_end"]) if "scan_end" in self.attrs else None
        rows, cols = self.start.shape
        return {"v": 1, "kind": "scan_summary", "scan_id": self.start.scan_id, "state": RECOVERED,
                "pixels_expected": rows * cols * ((self.start.frames or len(self.received)) if self.imaging else 1),
                "pixels_received": int(pixels), "pixels_recognized": min(per_rec.values(), default=0),
                **({"messages_sent": end["n_messages"]} if end else {}),
                "messages_received": len(seqs), "lost": [], "n_lost": 0, "lost_ranges": [],
                "rejected": [{"seq": int(s), "reason": "refused (recovered from the journal)"} for s in seqs[~ok]],
                "duration_s": (self.t_last - self.t_first) if self.t_first is not None else 0.0,
                "recognizers": {rec: {"pixels_recognized": n} for rec, n in per_rec.items()}}
