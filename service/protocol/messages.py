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

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, field_validator, model_validator

PROTOCOL_VERSION = 1
#: the version of docs/protocol.md this module implements: 1.x only adds to 1.0 (its §9), so the wire's
#: ``v`` stays ``PROTOCOL_VERSION``; ``status`` reports it as ``protocol``
PROTOCOL_REVISION = "1.3"

#: Largest scan edge and signal axis we accept; bigger values are certainly a corrupt header.
MAX_EDGE = 65_536

ScanId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]
#: a class name, as people write it ("B. subtilis spores"): any printable text
ClassName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Numbers are strict: an integer field takes a msgpack integer only (not "17", 3.0 or true), a float
# field a msgpack float or integer; lax coercion would accept headers that no sender meant.
Int = Annotated[int, Strict()]
Real = Annotated[float, Strict()]
Edge = Annotated[int, Strict(), Field(ge=1, le=MAX_EDGE)]
Index = Annotated[int, Strict(), Field(ge=0, le=2**53)]

#: Array element types on the wire; always little-endian.
DType = Literal["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


#: How deep ``meta`` may nest (maps and lists); deeper is certainly not instrument metadata.
MAX_META_DEPTH = 8


def check_meta(value: Any, depth: int = 0, where: str = "meta") -> None:
    """ValueError unless ``value`` is JSON-like data (maps with string keys, lists, strings, numbers,
    booleans, null) nested at most ``MAX_META_DEPTH`` deep: what ``scan_started`` can echo back."""
    if depth > MAX_META_DEPTH:
        raise ValueError(f"{where} nests deeper than {MAX_META_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key {key!r}")
            check_meta(item, depth + 1, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_meta(item, depth + 1, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is not a finite number")
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise ValueError(f"{where} is {type(value).__name__}; meta holds JSON-like values only")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Header(_Strict):
    v: Literal[1] = PROTOCOL_VERSION


class Axis(_Strict):
    """A uniformly sampled axis: the centre of channel ``k`` is at ``offset + k * scale`` ``units``.
    ``units`` ``""`` is an uncalibrated axis (what acquisition software sends before calibration): the
    ``pca`` analyzer takes it; a recognizer refuses it, naming the units it needs (docs/protocol.md §3.1)."""

    size: Edge
    offset: Real
    scale: Real = Field(gt=0)
    units: str = Field(max_length=16, description='"" = uncalibrated')

    @property
    def calibrated(self) -> bool:
        return bool(self.units)

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


class PixelSize(_Strict):
    """Spatial calibration of an image: one pixel is ``size`` ``units`` (square pixels)."""

    size: Real = Field(gt=0)
    units: str = Field(min_length=1, max_length=16)

    @field_validator("size")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class ArraySpec(_Strict):
    """Describes one raw buffer that follows the header, in order."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    dtype: DType
    shape: list[Annotated[int, Field(ge=0, le=2**31)]] = Field(max_length=4)
    labels: list[str] | None = Field(default=None, description="names along the last axis")
    units: list[str] | None = Field(default=None, description="units along the last axis")


# --------------------------------------------------------------------------- ingest: instrument -> service


class ScanStart(_Header):
    """Opens a scan.

    Spectral scans: ``shape`` is ``[rows, cols]`` of the scan, ``axis`` calibrates the signal axis and
    ``components`` names the values each channel carries when there are several (e.g.
    ``["amplitude", "phase"]``), in the order of the last data axis; data comes as ``data`` messages.
    Imaging scans (movies): ``shape`` is ``[height, width]`` of one frame, ``pixel_size`` calibrates it,
    ``frames`` optionally says how many will come, ``policy`` what to do when frames arrive faster than
    they are recognized; data comes as ``frame`` messages.
    """

    kind: Literal["scan_start"] = "scan_start"
    scan_id: ScanId
    modality: Name
    shape: tuple[Edge, Edge]
    axis: Axis | None = None
    components: list[Name] | None = Field(default=None, min_length=1, max_length=16)
    pixel_size: PixelSize | None = None
    frames: Annotated[int, Strict(), Field(ge=1, le=2**31)] | None = None
    policy: Literal["lossless", "latest"] = Field(
        "lossless", description="frames: lossless (backpressure) or latest (newest frame wins; skips reported)")
    recognizers: list[Name] | None = Field(default=None, max_length=8)
    meta: dict[str, Any] = Field(default_factory=dict, max_length=64)
    scan_step: PixelSize | None = Field(
        None, description="spectral scans (optional): the distance between neighbouring scan pixels, along rows "
                          "and columns (a spectrum image's spatial calibration)")
    frame_interval_s: Real | None = Field(
        None, gt=0, description="imaging scans (optional): seconds from one frame's start to the next's (a "
                                "movie's time calibration: diffusion constants in nm^2/s)")
    ring: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = Field(
        None, description="protocol 1.2: the token of a shared-memory ring this sender registered with the service "
                          "(docs/protocol.md §3.6); its data or frame messages may then name a slot instead of "
                          "carrying the payload")
    # None is false, and leaves the key out of what a client sends (a 1.2 service refuses keys it does not know)
    retain: bool | None = Field(
        None, description="protocol 1.3: keep the scan's raw data in the service (within the memory budget: "
                           "spectra as float32, or the last retain_frames frames of a movie) so that a `train` "
                           "request can learn from labelled pixels and earlier lines can be re-recognized by the "
                           "new model (docs/live-training.md)")

    @field_validator("meta")
    @classmethod
    def _json_meta(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_meta(value)
        return value

    @model_validator(mode="after")
    def _spectral_or_imaging(self) -> ScanStart:
        if (self.axis is None) == (self.pixel_size is None):
            raise ValueError("give either axis (a spectral scan) or pixel_size (an imaging scan), not both")
        if self.pixel_size is not None and self.components is not None:
            raise ValueError("components apply to spectral scans only")
        if self.pixel_size is not None and self.scan_step is not None:
            raise ValueError("scan_step applies to spectral scans only (an imaging scan has pixel_size)")
        if self.pixel_size is None and self.frame_interval_s is not None:
            raise ValueError("frame_interval_s applies to imaging scans only")
        if self.frame_interval_s is not None and not math.isfinite(self.frame_interval_s):
            raise ValueError("frame_interval_s must be finite")
        return self

    @property
    def imaging(self) -> bool:
        return self.pixel_size is not None


class Data(_Header):
    """One scan line, or part of one, starting at ``(row, col0)``: ``shape = [n_pixels, channels]``, or
    ``[n_pixels, channels, n_components]`` for a scan with ``components``."""

    kind: Literal["data"] = "data"
    scan_id: ScanId
    seq: Index
    row: Index
    col0: Index = 0
    shape: tuple[Edge, Edge] | tuple[Edge, Edge, Annotated[int, Strict(), Field(ge=1, le=16)]]
    dtype: DType
    t_ns: Int | None = Field(default=None, description="sender's wall clock, informative only")
    slot: Annotated[int, Strict(), Field(ge=0, le=1023)] | None = Field(
        default=None, description="protocol 1.2: the payload is in this slot of the scan's shared-memory ring "
                                  "(no buffer follows the header; docs/protocol.md §3.6)")


class Frame(_Header):
    """One image of an imaging scan: ``shape = [height, width]`` as in ``scan_start``; ``frame`` is its
    index in the movie (0-based, increasing); ``seq`` counts messages as for ``data``."""

    kind: Literal["frame"] = "frame"
    scan_id: ScanId
    seq: Index
    frame: Index
    shape: tuple[Edge, Edge]
    dtype: DType
    t_ns: Int | None = Field(default=None, description="sender's wall clock, informative only")
    slot: Annotated[int, Strict(), Field(ge=0, le=1023)] | None = Field(
        default=None, description="protocol 1.2: the payload is in this slot of the scan's shared-memory ring "
                                  "(no buffer follows the header; docs/protocol.md §3.6)")


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
    "forbidden",  # data or scan_end for an open scan from a sender (key) that did not start it
    "duplicate_scan",  # no longer sent (a scan_start for an open id is answered scan_rejected); kept for old readers
    "scan_rejected",  # scan_start refused (invalid header, id already open, modality, recognizer, axis, size, memory)
    "data_rejected",  # a data message refused (shape, dtype, position, non-finite values, duplicate seq)
    "late",  # data for a scan that has already ended
    "skipped",  # frames dropped by the newest-frame-wins policy (never with policy lossless)
    "lost",  # seq numbers that never arrived before scan_end / timeout
    "scan_timeout",  # a scan closed because nothing arrived for too long
    "aborted",  # the service stopped before the scan ended; its summary (state aborted) follows
    "mostly_foreign",  # more than half of what a recognizer has seen of a scan is novel (unlike its training data)
    "recording_stopped",  # recording of a scan stopped early (disk error, record_budget_bytes); the scan goes on
    "recognizers_skipped",  # 1.1: recognizers of the scan's modality that cannot take its data; the others run
    "train_failed",  # 1.3: a live training job failed (bad labels, trainer crashed or past its budget); nothing changed
    "internal",  # a bug in scanlens; the scan it names may be incomplete
]


class ScanStarted(_Header):
    """Published when a scan is accepted; says which recognizers run and what each line will carry."""

    kind: Literal["scan_started"] = "scan_started"
    scan_id: ScanId
    modality: Name
    shape: tuple[Edge, Edge]
    axis: Axis | None = None
    components: list[Name] | None = None
    pixel_size: PixelSize | None = None
    frames: int | None = None
    policy: Literal["lossless", "latest"] = "lossless"
    recognizers: list[Name]
    outputs: dict[str, list[ArraySpec]] = Field(
        description="per recognizer, the arrays of a maps message (shape given for one pixel)"
    )
    meta: dict[str, Any] = Field(default_factory=dict)
    scan_step: PixelSize | None = None
    frame_interval_s: float | None = None
    skipped: dict[str, str] | None = Field(
        None, description="protocol 1.1: recognizers of the modality that do not run on this scan, each with "
                          "the reason (only when none were requested by name; docs/protocol.md §3.1)")


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
    revision: int | None = Field(
        None, description="protocol 1.3: which live training of this recognizer made these maps (1, 2, ...); absent "
                          "for a model loaded at start. A line may come again with a higher revision (re-recognized "
                          "by a new model): the higher revision wins, a lower one arriving later is stale")


def line_slice(row: int, col0: int, n_pixels: int) -> tuple[int, slice]:
    """Where a line of ``n_pixels`` starting at ``(row, col0)`` sits in a ``[rows, cols, ...]`` map.

    The one placement rule for a ``data`` line and the ``maps`` message it gives: the service writes
    its maps with it and clients assemble published maps with it (``maps[line_slice(...)] = values``)."""
    return row, slice(col0, col0 + n_pixels)


class FrameResult(_Header):
    """Results for one frame from one recognizer; buffers follow in the order of ``arrays``:
    ``classes`` (uint8 ``[height, width]``, the segmentation at the frame's own pixel size), ``atoms``
    (float32 ``[n, 3]``: x, y in frame pixels, atom class) and ``defects`` (float32 ``[m, 5]``: x, y,
    defect class, confidence, track id)."""

    kind: Literal["frame_result"] = "frame_result"
    scan_id: ScanId
    recognizer: Name
    seq: Index
    frame: Index
    latency_ms: float
    n_atoms: Index
    n_defects: Index
    arrays: list[ArraySpec]
    tracking: dict[str, Any] | None = Field(
        default=None, description="running defect tracking statistics after this frame (as in scan_summary)")
    novelty: float | None = Field(
        default=None, description="models with novelty: how unlike the training frames this frame is (higher is "
        "further)")
    novel: bool | None = Field(
        default=None, description="models with novelty: novelty above the card's threshold; the frame's atoms and "
        "defects are not vouched for")
    revision: int | None = Field(
        None, description="protocol 1.3: which live training of this recognizer made this result; absent for a "
                          "model loaded at start")


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
    frames_recognized: Index | None = None
    novel_fraction: float | None = Field(
        default=None, ge=0, le=1, description="share of the recognized pixels (frames) flagged novel: unlike the "
        "recognizer's training data, its answer not vouched for; absent when the model has no novelty calibration")
    tracking: dict[str, Any] | None = Field(
        default=None, description="frames: defect tracks, diffusion coefficients, transition matrix")


class ScanSummary(_Header):
    """The end-of-scan account: every seq below ``messages_sent`` is recognized, rejected or lost.

    Data that arrives after this summary is reported by a ``late`` event (and in the ``scans`` reply).
    """

    kind: Literal["scan_summary"] = "scan_summary"
    scan_id: ScanId
    state: Literal["complete", "incomplete", "timed_out", "aborted"] = Field(
        description="aborted: the service stopped (shutdown) before the scan ended")
    pixels_expected: Index
    pixels_received: Index
    pixels_recognized: Index
    messages_sent: Index | None = Field(None, description="n_messages from scan_end; absent after a timeout")
    messages_received: Index
    lost: list[Index] = Field(description="lost seqs one by one: the first 4096 (n_lost says how many in all)")
    n_lost: Index = Field(0, description="how many seqs were lost")
    lost_ranges: list[tuple[Index, Index]] = Field(
        default_factory=list, description="every lost seq, as half-open [start, stop) runs")
    rejected: list[Rejection]
    skipped: list[Index] = Field(default_factory=list, description="frame seqs dropped by policy 'latest'")
    latency_ms_p50: float | None = None  # absent when nothing was recognized
    latency_ms_p99: float | None = None
    duration_s: float
    recognizers: dict[str, RecognizerSummary]


class Status(_Header):
    """Periodic heartbeat on topic ``service/status``; also the reply body of the ``status`` request."""

    kind: Literal["status"] = "status"
    version: str
    protocol: str | None = Field(None, description="the protocol document's version, e.g. \"1.1\" (wire v stays 1)")
    uptime_s: float
    open_scans: list[ScanId]
    recognizers: list[Name]
    counters: dict[str, int]
    queued_pixels: Index
    memory_bytes: Index | None = Field(None, description="bytes reserved by open and retained scans")
    memory_budget_bytes: Index | None = Field(None, description="memory_budget_bytes of the service")
    providers: dict[Name, list[Name]] | None = Field(
        None, description="1.1: per recognizer, the ONNX Runtime execution providers that took its session, the one "
                          "that runs it first (short names: CPU, CUDA, TensorRT, ...)")
    provider_warnings: list[str] | None = Field(
        None, description="1.1: why recognizers run on another execution provider than the first one configured "
                          "(e.g. CUDA not in this onnxruntime build, falling back to CPU), each once; empty: none")


# --------------------------------------------------------------------------- control: client <-> service

ControlOp = Literal["status", "models", "scans", "snapshot", "train"]

#: the longest a live training job may be given (``budget_s`` of a ``train`` request)
MAX_TRAIN_BUDGET_S = 3600.0


class Request(_Header):
    kind: Literal["request"] = "request"
    id: Annotated[int, Strict(), Field(ge=0, le=2**53)] | Annotated[str, Field(max_length=64)]
    op: ControlOp
    scan_id: ScanId | None = None
    rows: tuple[Index, Index] | None = Field(
        None, description="snapshot: only scan rows [start, stop) of the per-pixel arrays (a snapshot in parts)")
    # protocol 1.3, op "train" (docs/protocol.md §5.5): the label image travels as the request's one buffer
    arrays: list[ArraySpec] | None = Field(
        None, max_length=1, description="train: the label image, uint8 [rows, cols] (a spectral "
                                                        "scan) or [height, width] (one frame of a movie)")
    classes: list[ClassName] | None = Field(
        None, min_length=1, max_length=255, description="train: label k of the label image is classes[k-1]; 0 = "
                                                        "unlabelled")
    name: Name | None = Field(None, description="train: the new recognizer's name (default <scan_id>-live, "
                                                "made a valid name)")
    base: Name | None = Field(None, description="train: a recognizer to fine-tune (frames: default the scan's "
                                                "frame recognizer)")
    budget_s: Real | None = Field(None, gt=0, le=MAX_TRAIN_BUDGET_S,
                                  description="train: seconds the job may take, export included (default: "
                                              "the service's train_budget_s)")
    frame: Index | None = Field(None, description="train, movies: the index of the labelled frame")


TrainState = Literal["started", "progress", "trained", "swapped", "redone", "failed"]


class TrainUpdate(_Header):
    """Protocol 1.3: how a live training job goes, on topic ``scan/<scan_id>/train`` (docs/live-training.md).

    ``started`` (the trainer took the job), ``progress`` (after every epoch), ``trained`` (the model is exported
    and being loaded), ``swapped`` (every data message from now on goes to the new recognizer too; its
    ``outputs`` say what its maps carry), ``redone`` (the lines received before were re-recognized and
    re-published), or ``failed`` (``reason``; the scan and its recognizers are unchanged)."""

    kind: Literal["train_update"] = "train_update"
    job: Annotated[str, Field(min_length=1, max_length=64)]
    scan_id: ScanId
    state: TrainState
    recognizer: Name
    revision: int = Field(ge=1)
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    elapsed_s: float = Field(description="seconds since the train request was accepted")
    reason: str | None = None
    metrics: dict[str, float] | None = None
    outputs: list[ArraySpec] | None = Field(None, description="swapped: the arrays of the new recognizer's maps "
                                                              "(shape given for one pixel), as in scan_started")
    lines: int | None = Field(None, description="swapped: lines (frames) to re-recognize; redone: how many were")


class Reply(_Header):
    kind: Literal["reply"] = "reply"
    id: int | str | None = None  # absent when the request could not be read
    op: str
    ok: bool
    error: str | None = None
    result: dict[str, Any] | None = None
    arrays: list[ArraySpec] = Field(default_factory=list)


Message = Annotated[
    Union[ScanStart, Data, Frame, ScanEnd, ScanStarted, Maps, FrameResult, Event, ScanSummary, Status, Request,
          Reply, TrainUpdate],
    Field(discriminator="kind"),
]
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

INGEST_KINDS = frozenset({"scan_start", "data", "frame", "scan_end"})
