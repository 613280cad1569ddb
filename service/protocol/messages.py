"""Every header of wire protocol v1, as pydantic models in one tagged union keyed by ``kind``.

A message on any scanlens socket is multipart ``[header, buffer, ...]``; the header is a msgpack map
that validates as exactly one of the models below (``extra="forbid"``: unknown keys are an error),
and arrays travel as raw little-endian C-contiguous buffers described in the header.
``docs/protocol.md`` is the prose version of this module; ``docs/protocol.schema.json`` is generated
from it (``scanlens schema``) and a test fails when the two drift apart.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

PROTOCOL_VERSION = 1

#: Largest scan edge and signal axis we accept; bigger values are certainly a corrupt header.
MAX_EDGE = 65_536

ScanId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]
Edge = Annotated[int, Field(ge=1, le=MAX_EDGE)]
Index = Annotated[int, Field(ge=0, le=2**53)]

#: Array element types on the wire; always little-endian.
DType = Literal["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Header(_Strict):
    v: Literal[1] = PROTOCOL_VERSION


class Axis(_Strict):
    """A calibrated, uniformly sampled axis: channel ``k`` sits at ``offset + k * scale`` ``units``."""

    size: Edge
    offset: float
    scale: float = Field(gt=0)
    units: str = Field(min_length=1, max_length=16)

    @field_validator("offset", "scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @property
    def end(self) -> float:
        """Position of the last channel."""
        return self.offset + (self.size - 1) * self.scale


class ArraySpec(_Strict):
    """Describes one raw buffer that follows the header, in order."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    dtype: DType
    shape: list[Annotated[int, Field(ge=0, le=2**31)]] = Field(max_length=4)
    labels: list[str] | None = Field(default=None, description="names along the last axis")
    units: list[str] | None = Field(default=None, description="units along the last axis")


# --------------------------------------------------------------------------- ingest: instrument -> service


class ScanStart(_Header):
    """Opens a scan. ``shape`` is ``[rows, cols]``; ``axis`` calibrates the signal (spectral) axis;
    ``components`` names the values each channel carries when there are several (e.g.
    ``["amplitude", "phase"]``), in the order of the last data axis."""

    kind: Literal["scan_start"] = "scan_start"
    scan_id: ScanId
    modality: Name
    shape: tuple[Edge, Edge]
    axis: Axis
    components: list[Name] | None = Field(default=None, min_length=1, max_length=16)
    recognizers: list[Name] | None = Field(default=None, max_length=8)
    meta: dict[str, Any] = Field(default_factory=dict, max_length=64)


class Data(_Header):
    """One scan line, or part of one, starting at ``(row, col0)``: ``shape = [n_pixels, channels]``, or
    ``[n_pixels, channels, n_components]`` for a scan with ``components``."""

    kind: Literal["data"] = "data"
    scan_id: ScanId
    seq: Index
    row: Index
    col0: Index = 0
    shape: tuple[Edge, Edge] | tuple[Edge, Edge, Annotated[int, Field(ge=1, le=16)]]
    dtype: DType
    t_ns: int | None = Field(default=None, description="sender's wall clock, informative only")


class ScanEnd(_Header):
    """Closes a scan; ``n_messages`` is how many data messages the sender sent (seq 0..n-1)."""

    kind: Literal["scan_end"] = "scan_end"
    scan_id: ScanId
    n_messages: Index


# --------------------------------------------------------------------------- output: service -> subscribers

EventCode = Literal[
    "bad_message",  # undecodable bytes or a header that fails validation
    "oversized",  # message over the configured size limits
    "unknown_scan",  # data or scan_end for a scan id that is not open
    "duplicate_scan",  # scan_start for a scan id that is already open
    "scan_rejected",  # scan_start refused (modality, recognizer, axis, size)
    "data_rejected",  # a data message refused (shape, dtype, position, non-finite values, duplicate seq)
    "late",  # data for a scan that has already ended
    "lost",  # seq numbers that never arrived before scan_end / timeout
    "scan_timeout",  # a scan closed because nothing arrived for too long
    "internal",  # a bug in scanlens; the scan it names may be incomplete
]


class ScanStarted(_Header):
    """Published when a scan is accepted; says which recognizers run and what each line will carry."""

    kind: Literal["scan_started"] = "scan_started"
    scan_id: ScanId
    modality: Name
    shape: tuple[Edge, Edge]
    axis: Axis
    components: list[Name] | None = None
    recognizers: list[Name]
    outputs: dict[str, list[ArraySpec]] = Field(
        description="per recognizer, the arrays of a maps message (shape given for one pixel)"
    )
    meta: dict[str, Any] = Field(default_factory=dict)


class Maps(_Header):
    """Results for one data message, from one recognizer; buffers follow in the order of ``arrays``."""

    kind: Literal["maps"] = "maps"
    scan_id: ScanId
    recognizer: Name
    seq: Index
    row: Index
    col0: Index
    n_pixels: Edge
    latency_ms: float = Field(description="from receipt of the data message to this publication")
    arrays: list[ArraySpec]


class Event(_Header):
    """Something the operator must know about: an error, a rejection, a loss."""

    kind: Literal["event"] = "event"
    scan_id: ScanId | None = None
    level: Literal["info", "warning", "error"] = "error"
    code: EventCode
    reason: str
    seq: Index | None = None
    seqs: list[Index] | None = None


class Rejection(_Strict):
    seq: Index
    reason: str


class RecognizerSummary(_Strict):
    pixels_recognized: Index
    class_fractions: dict[str, float] | None = None
    explained_variance_ratio: list[float] | None = Field(
        default=None, description="PCA: share of the variance of each published component")
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None


class ScanSummary(_Header):
    """The end-of-scan account: every seq below ``messages_sent`` is recognized, rejected or lost.

    Data that arrives after this summary is reported by a ``late`` event (and in the ``scans`` reply).
    """

    kind: Literal["scan_summary"] = "scan_summary"
    scan_id: ScanId
    state: Literal["complete", "incomplete", "timed_out"]
    pixels_expected: Index
    pixels_received: Index
    pixels_recognized: Index
    messages_sent: Index | None = Field(None, description="n_messages from scan_end; absent after a timeout")
    messages_received: Index
    lost: list[Index]
    rejected: list[Rejection]
    latency_ms_p50: float | None = None  # absent when nothing was recognized
    latency_ms_p99: float | None = None
    duration_s: float
    recognizers: dict[str, RecognizerSummary]


class Status(_Header):
    """Periodic heartbeat on topic ``service/status``; also the reply body of the ``status`` request."""

    kind: Literal["status"] = "status"
    version: str
    uptime_s: float
    open_scans: list[ScanId]
    recognizers: list[Name]
    counters: dict[str, int]
    queued_pixels: Index


# --------------------------------------------------------------------------- control: client <-> service

ControlOp = Literal["status", "models", "scans", "snapshot"]


class Request(_Header):
    kind: Literal["request"] = "request"
    id: Annotated[int, Field(ge=0, le=2**53)] | Annotated[str, Field(max_length=64)]
    op: ControlOp
    scan_id: ScanId | None = None


class Reply(_Header):
    kind: Literal["reply"] = "reply"
    id: int | str | None = None  # absent when the request could not be read
    op: str
    ok: bool
    error: str | None = None
    result: dict[str, Any] | None = None
    arrays: list[ArraySpec] = Field(default_factory=list)


Message = Annotated[
    Union[ScanStart, Data, ScanEnd, ScanStarted, Maps, Event, ScanSummary, Status, Request, Reply],
    Field(discriminator="kind"),
]
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

INGEST_KINDS = frozenset({"scan_start", "data", "scan_end"})
