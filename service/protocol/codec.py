"""Pure encode/decode between protocol messages and multipart frames; limits on everything untrusted.

``encode(header, arrays) -> frames`` and ``decode(frames) -> (header, buffers)`` hold no sockets:
the transport layer moves the frames, the pipeline interprets the buffers. Arrays are never put
inside msgpack; they travel as raw little-endian C-contiguous buffers after the header, and the
receiving side wraps them with ``numpy.frombuffer`` without copying.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import msgpack
import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from .messages import MESSAGE_ADAPTER, ArraySpec, Event, Index, Message, ScanId, ScanSummary

#: Buffers type accepted by encode/decode: bytes, memoryview, zmq.Frame (buffer protocol) ...
Buffer = Any


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``code`` is an EventCode; ``scan_id``/``seq`` when known."""

    def __init__(self, code: str, reason: str, *, scan_id: str | None = None, seq: int | None = None,
                 kind: str | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.scan_id = scan_id
        self.seq = seq
        self.kind = kind  # the header's kind when it could be read (a scan_start is answered scan_rejected)


class ReplyTooLarge(ProtocolError):
    """A control reply over the reply limit; ``result`` says how to ask for it in parts."""

    def __init__(self, reason: str, result: dict[str, Any], *, scan_id: str | None = None):
        super().__init__("oversized", reason, scan_id=scan_id)
        self.result = result


class UnknownKindError(ProtocolError):
    """A header whose ``kind`` this version does not know (code ``bad_message``); tolerant readers skip it."""

    def __init__(self, kind: object, *, scan_id: str | None = None, seq: int | None = None):
        super().__init__("bad_message", f"unknown message kind {kind!r}", scan_id=scan_id, seq=seq)
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """Upper bounds for anything that comes from the network."""

    max_header_bytes: int = 64 * 1024
    max_frames: int = 16
    max_payload_bytes: int = 256 * 1024 * 1024

    def unpacker_kwargs(self) -> dict[str, int]:
        n = self.max_header_bytes
        return {"max_str_len": n, "max_bin_len": n, "max_array_len": 4096, "max_map_len": 1024, "max_ext_len": 0}


DEFAULT_LIMITS = Limits()

_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
           ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")}


def wire_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a protocol dtype name."""
    return _DTYPES[name]


#: dtype -> protocol name, both byte orders: looked up for every array sent (``np.dtype.name`` costs µs)
_NAMES = {d: name for name, dt in _DTYPES.items() for d in (dt, dt.newbyteorder(">"))}


def dtype_name(dtype: np.dtype) -> str:
    """The protocol name of a numpy dtype (byte order ignored); ValueError if it has none."""
    name = _NAMES.get(dtype) if isinstance(dtype, np.dtype) else None
    if name is not None:
        return name
    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"dtype {name} cannot travel on the wire; use one of {sorted(_DTYPES)}")
    return name


def as_wire_array(array: np.ndarray) -> np.ndarray:
    """The array as a little-endian C-contiguous array (no copy when it already is one)."""
    dt = wire_dtype(dtype_name(array.dtype))
    return np.ascontiguousarray(array, dtype=dt)


def array_spec(name: str, array: np.ndarray, **extra: Any) -> ArraySpec:
    return ArraySpec(name=name, dtype=dtype_name(array.dtype), shape=list(array.shape), **extra)


def _header_dict(header: BaseModel) -> dict[str, Any]:
    return header.model_dump(mode="json", exclude_none=True)


def encode(header: BaseModel, arrays: Sequence[np.ndarray] = ()) -> list[Buffer]:
    """Frames ``[msgpack(header), buffer, ...]``; arrays are passed as buffers without copying."""
    frames: list[Buffer] = [msgpack.packb(_header_dict(header), use_bin_type=True)]
    for array in arrays:
        wire = as_wire_array(array)
        frames.append(memoryview(wire).cast("B") if wire.size else b"")
    return frames


def unpack_header(raw: Buffer, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """msgpack bytes -> dict, with limits; ProtocolError('bad_message') on anything else."""
    view = memoryview(raw)
    if view.nbytes > limits.max_header_bytes:
        raise ProtocolError("oversized", f"header is {view.nbytes} bytes, limit {limits.max_header_bytes}")
    try:
        obj = msgpack.unpackb(view, raw=False, strict_map_key=True, **limits.unpacker_kwargs())
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise ProtocolError("bad_message", f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"header is a msgpack {type(obj).__name__}, expected a map")
    return obj


def _brief(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "invalid header: " + "; ".join(parts)


_SCAN_ID = TypeAdapter(ScanId)
_INDEX = TypeAdapter(Index)


def _identifiers(obj: dict[str, Any]) -> tuple[str | None, int | None]:
    """The header's ``scan_id`` and ``seq`` where they are valid, else None: an error about a header is
    reported under the identifiers it may carry, never under ones its own event could not publish."""
    scan_id, seq = obj.get("scan_id"), obj.get("seq")
    try:
        scan_id = _SCAN_ID.validate_python(scan_id, strict=True) if scan_id is not None else None
    except ValidationError:
        scan_id = None
    try:
        seq = _INDEX.validate_python(seq, strict=True) if seq is not None else None
    except ValidationError:
        seq = None
    return scan_id, seq


def validate_header(obj: dict[str, Any], *, tolerant: bool = False) -> Message:
    """dict -> the one message model its ``kind`` names; ProtocolError naming the bad fields.

    ``tolerant`` reads what a newer service may publish (see ``validate_tolerant``); an unknown
    ``kind`` is then an ``UnknownKindError``. Strict (the default) is for everything received."""
    scan_id, seq = _identifiers(obj)
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else None
    if type(obj.get("v")) is not int or obj["v"] != 1:  # strict: not 1.0, not true (both compare equal to 1)
        raise ProtocolError("bad_message", f"unsupported protocol version {obj.get('v')!r} (this is v1)",
                            scan_id=scan_id, seq=seq, kind=kind)
    try:
        kind = obj.get("kind")
        if not tolerant or not isinstance(kind, str):  # no kind, or not a string: refused either way
            return MESSAGE_ADAPTER.validate_python(obj)
        if kind not in MODELS_BY_KIND:
            raise UnknownKindError(kind, scan_id=scan_id, seq=seq)
        return _validate_tolerant(MODELS_BY_KIND[kind], obj)  # type: ignore[return-value]
    except ValidationError as exc:
        raise ProtocolError("bad_message", _brief(exc), scan_id=scan_id, seq=seq, kind=kind) from None


# --------------------------------------------------------------------------- tolerant reading (clients)

#: kind -> model, for reading one message kind without the tagged union.
MODELS_BY_KIND: dict[str, type[BaseModel]] = {
    m.model_fields["kind"].default: m for m in get_args(get_args(Message)[0])}

#: Literal fields whose vocabulary grows additively within v1 (new event codes, levels, summary states):
#: a tolerant reader keeps an unknown string value instead of refusing the message. Every other Literal
#: (``v``, ``kind``, ``dtype``, ...) stays closed: a reader cannot use a value it does not know there.
OPEN_VOCABULARIES: dict[type[BaseModel], tuple[str, ...]] = {Event: ("code", "level"), ScanSummary: ("state",)}

M = TypeVar("M", bound=BaseModel)


def validate_tolerant(model: type[M], obj: Any) -> M:
    """``obj`` as ``model``, read the way a client reads what the service publishes (pydantic
    ValidationError otherwise).

    Keys that ``model`` (or a model nested in it) does not define are dropped, and an unknown string
    in one of ``OPEN_VOCABULARIES`` is kept; everything the model does define is validated as usual."""
    return _validate_tolerant(model, obj)


def _validate_tolerant(model: type[M], obj: Any) -> M:
    try:  # what this version publishes validates as it is, at the strict cost (pruning costs 5x more)
        return model.model_validate(obj)
    except ValidationError:
        if not isinstance(obj, dict):
            raise
    data = _prune(obj, model)
    unknown: dict[str, str] = {}
    for name in OPEN_VOCABULARIES.get(model, ()):
        allowed = _literal_values(model.model_fields[name].annotation)
        value = data.get(name)
        if isinstance(value, str) and value not in allowed:
            unknown[name] = value
            data[name] = allowed[0]  # validate the rest with a stand-in, then put the value back
    validated = model.model_validate(data)
    return validated.model_copy(update=unknown) if unknown else validated


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    """The values of the Literal in ``annotation`` (through Annotated and ``| None``)."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if values := _literal_values(arg):
            return values
    return ()


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _prune(value: Any, annotation: Any) -> Any:
    """``value`` without the dict keys that the models in ``annotation`` do not define, at any depth."""
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return value
        fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
        return {k: _prune(v, fields[k].annotation) for k, v in value.items() if k in fields}
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if _fits(value, _unwrap(arg)):
                return _prune(value, arg)
        return value
    if origin in (list, set, frozenset, Sequence) and isinstance(value, list):
        (item,) = get_args(annotation) or (Any,)
        return [_prune(v, item) for v in value]
    if origin is tuple and isinstance(value, list):
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return [_prune(v, args[0]) for v in value]
        return [_prune(v, a) for v, a in zip(value, args)] + value[len(args):]
    if origin is dict and isinstance(value, dict):
        _, item = get_args(annotation) or (Any, Any)
        return {k: _prune(v, item) for k, v in value.items()}
    return value


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` has the container shape of ``annotation`` (which arm of a union to prune by)."""
    origin = get_origin(annotation) or annotation
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return isinstance(value, dict)
    if origin in (list, tuple, set, frozenset, Sequence):
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return False


def decode(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS, *,
           tolerant: bool = False) -> tuple[Message, list[memoryview]]:
    """Frames -> (validated header, buffers as memoryviews over the received frames).

    Strict by default: the service decodes everything it receives this way. ``tolerant=True`` is for
    clients reading what the service publishes (wire rule: additions within v1 are optional), see
    ``validate_tolerant``; an unknown ``kind`` raises ``UnknownKindError`` for the reader to skip."""
    if not frames:
        raise ProtocolError("bad_message", "empty message")
    if len(frames) > limits.max_frames:
        raise ProtocolError("oversized", f"{len(frames)} frames, limit {limits.max_frames}")
    header = validate_header(unpack_header(frames[0], limits), tolerant=tolerant)
    buffers = [memoryview(f) for f in frames[1:]]
    total = sum(b.nbytes for b in buffers)
    if total > limits.max_payload_bytes:
        raise ProtocolError("oversized", f"payload is {total} bytes, limit {limits.max_payload_bytes}",
                            scan_id=getattr(header, "scan_id", None), seq=getattr(header, "seq", None),
                            kind=header.kind)
    return header, buffers


def split_envelope(frames: Sequence[Buffer], *, hops: int = 1) -> tuple[list[Buffer], list[Buffer]]:
    """A control message as received -> (envelope, body), the one rule for both ends of the control socket.

    The envelope runs up to and including the first empty frame (the delimiter a REQ socket, and
    scanlens' client, put before the header). Without one it is the first ``hops`` frames: 1 for the
    routing id a ROUTER prepends (a DEALER peer may omit the delimiter), 0 at a DEALER."""
    frames = list(frames)
    empty = next((i for i, f in enumerate(frames) if memoryview(f).nbytes == 0), None)
    split = empty + 1 if empty is not None else hops
    return frames[:split], frames[split:]


def buffer_to_array(buffer: Buffer, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Wrap a received buffer as an array (zero copy, read-only); ValueError when sizes disagree."""
    dt = wire_dtype(dtype)
    view = memoryview(buffer)
    expected = math.prod(shape) * dt.itemsize  # Python ints: no overflow, and 4x cheaper than np.prod here
    if view.nbytes != expected:
        raise ValueError(f"buffer has {view.nbytes} bytes but shape {list(shape)} of {dtype} needs {expected}")
    return np.frombuffer(view, dtype=dt).reshape(shape)


def arrays_from(specs: Sequence[ArraySpec], buffers: Sequence[Buffer]) -> dict[str, np.ndarray]:
    """Arrays of a maps message or reply, keyed by spec name."""
    if len(specs) != len(buffers):
        raise ValueError(f"header describes {len(specs)} arrays but {len(buffers)} buffers follow")
    return {s.name: buffer_to_array(b, s.dtype, s.shape) for s, b in zip(specs, buffers)}


#: rows of this many values are summed at a time by ``all_finite``, for arrays of at least
#: ``_FINITE_SUMMED`` values (below that the product's fixed cost, about 10 µs, is more than it saves)
_FINITE_ROW = 1024
_FINITE_SUMMED = 65536
_ONES = {np.dtype(t): np.ones(_FINITE_ROW, t) for t in (np.float32, np.float64)}


def all_finite(values: np.ndarray) -> bool:
    """Whether every value of a float array is finite (no NaN, no ±Inf).

    A contiguous float32 or float64 array is checked by summing rows of it with one BLAS matrix-vector
    product (rows @ ones): a NaN or an infinity in a row makes that row's sum NaN or infinite under IEEE
    arithmetic, whatever the order of the additions. The product multiplies by ones, not zeros, because
    a BLAS may skip the columns of zeros. So a finite sum of every row proves every value finite. A
    non-finite sum (a NaN or Inf, or finite values so large that their sum overflows) is settled by the
    exact check. On a 2 MiB line this is 2–4 times faster than ``np.isfinite(values).all()``, which runs
    on the event loop for every line (docs/performance.md, "How the service is built for speed"); smaller
    arrays get the exact check."""
    ones = _ONES.get(values.dtype)
    if ones is not None and values.size >= _FINITE_SUMMED and values.flags.c_contiguous:
        flat, n = values.reshape(-1), values.size // _FINITE_ROW * _FINITE_ROW
        with np.errstate(invalid="ignore", over="ignore"):
            sums = flat[:n].reshape(-1, _FINITE_ROW) @ ones
        if np.isfinite(sums).all():
            return bool(np.isfinite(flat[n:]).all())
    return bool(np.isfinite(values).all())
