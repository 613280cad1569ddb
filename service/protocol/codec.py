"""Pure encode/decode between protocol messages and multipart frames; limits on everything untrusted.

``encode(header, arrays) -> frames`` and ``decode(frames) -> (header, buffers)`` hold no sockets:
the transport layer moves the frames, the pipeline interprets the buffers. Arrays are never put
inside msgpack; they travel as raw little-endian C-contiguous buffers after the header, and the
receiving side wraps them with ``numpy.frombuffer`` without copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from .messages import MESSAGE_ADAPTER, ArraySpec, Message

#: Buffers type accepted by encode/decode: bytes, memoryview, zmq.Frame (buffer protocol) ...
Buffer = Any


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``code`` is an EventCode; ``scan_id``/``seq`` when known."""

    def __init__(self, code: str, reason: str, *, scan_id: str | None = None, seq: int | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.scan_id = scan_id
        self.seq = seq


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


def dtype_name(dtype: np.dtype) -> str:
    """The protocol name of a numpy dtype (byte order ignored); ValueError if it has none."""
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


def validate_header(obj: dict[str, Any]) -> Message:
    """dict -> the one message model its ``kind`` names; ProtocolError naming the bad fields."""
    scan_id = obj.get("scan_id") if isinstance(obj.get("scan_id"), str) else None
    seq = obj.get("seq") if isinstance(obj.get("seq"), int) else None
    if obj.get("v") != 1:
        raise ProtocolError("bad_message", f"unsupported protocol version {obj.get('v')!r} (this is v1)",
                            scan_id=scan_id, seq=seq)
    try:
        return MESSAGE_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError("bad_message", _brief(exc), scan_id=scan_id, seq=seq) from None


def decode(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> tuple[Message, list[memoryview]]:
    """Frames -> (validated header, buffers as memoryviews over the received frames)."""
    if not frames:
        raise ProtocolError("bad_message", "empty message")
    if len(frames) > limits.max_frames:
        raise ProtocolError("oversized", f"{len(frames)} frames, limit {limits.max_frames}")
    header = validate_header(unpack_header(frames[0], limits))
    buffers = [memoryview(f) for f in frames[1:]]
    total = sum(b.nbytes for b in buffers)
    if total > limits.max_payload_bytes:
        raise ProtocolError("oversized", f"payload is {total} bytes, limit {limits.max_payload_bytes}",
                            scan_id=getattr(header, "scan_id", None), seq=getattr(header, "seq", None))
    return header, buffers


def buffer_to_array(buffer: Buffer, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Wrap a received buffer as an array (zero copy, read-only); ValueError when sizes disagree."""
    dt = wire_dtype(dtype)
    view = memoryview(buffer)
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if view.nbytes != expected:
        raise ValueError(f"buffer has {view.nbytes} bytes but shape {list(shape)} of {dtype} needs {expected}")
    return np.frombuffer(view, dtype=dt).reshape(shape)


def arrays_from(specs: Sequence[ArraySpec], buffers: Sequence[Buffer]) -> dict[str, np.ndarray]:
    """Arrays of a maps message or reply, keyed by spec name."""
    if len(specs) != len(buffers):
        raise ValueError(f"header describes {len(specs)} arrays but {len(buffers)} buffers follow")
    return {s.name: buffer_to_array(b, s.dtype, s.shape) for s, b in zip(specs, buffers)}
