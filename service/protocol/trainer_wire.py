"""The pipe between the service and its trainer process: length-prefixed msgpack maps.

The service starts the trainer (``python -m scanlens.models.live``, torch from the ``train`` extra) with
pipes on its standard input and output and never imports torch itself. Each message, both ways, is a
4-byte little-endian length and a msgpack map; numpy arrays travel inside it as
``{"__ndarray__": dtype, "shape": [...], "data": bytes}`` (little-endian, C order). ``docs/live-training.md``
lists the messages; this module only frames them, for both ends.
"""

from __future__ import annotations

import asyncio
import struct
from typing import IO, Any

import msgpack
import numpy as np

_LENGTH = struct.Struct("<I")
#: the largest message either end accepts (the labelled spectra of a large scan fit many times over)
MAX_FRAME_BYTES = 1 << 30
_ARRAY_KEY = "__ndarray__"


class TrainerWireError(ValueError):
    """A frame on the trainer pipe that cannot be read."""


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        return {_ARRAY_KEY: dtype.str, "shape": list(array.shape), "data": array.astype(dtype, copy=False).tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send {type(value).__name__} to the trainer")


def _hook(value: dict[str, Any]) -> Any:
    if _ARRAY_KEY in value:
        try:
            return np.frombuffer(value["data"], dtype=np.dtype(value[_ARRAY_KEY])).reshape(value["shape"])
        except (TypeError, ValueError, KeyError) as exc:
            raise TrainerWireError(f"bad array on the trainer pipe: {exc}") from None
    return value


def pack(message: dict[str, Any]) -> bytes:
    """One framed message: length, then the msgpack map (arrays as described above)."""
    body = msgpack.packb(message, default=_default, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise TrainerWireError(f"message of {len(body)} bytes is over the trainer pipe's {MAX_FRAME_BYTES}")
    return _LENGTH.pack(len(body)) + body


def unpack(body: bytes) -> dict[str, Any]:
    """The map of one frame's body (without its length)."""
    try:
        message = msgpack.unpackb(body, object_hook=_hook, raw=False)
    except TrainerWireError:
        raise
    except Exception as exc:
        raise TrainerWireError(f"undecodable frame on the trainer pipe: {exc}") from None
    if not isinstance(message, dict):
        raise TrainerWireError(f"a trainer message must be a map, got {type(message).__name__}")
    return message


def _length(prefix: bytes) -> int:
    (length,) = _LENGTH.unpack(prefix)
    if length > MAX_FRAME_BYTES:
        raise TrainerWireError(f"frame of {length} bytes announced, over {MAX_FRAME_BYTES}")
    return length


def write_frame(stream: IO[bytes], message: dict[str, Any]) -> None:
    """Write one message to a binary stream and flush it."""
    stream.write(pack(message))
    stream.flush()


def read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next message of a binary stream; None at a clean end of file; TrainerWireError when cut short."""
    prefix = stream.read(_LENGTH.size)
    if not prefix:
        return None
    if len(prefix) < _LENGTH.size:
        raise TrainerWireError("trainer pipe closed inside a frame's length")
    length = _length(prefix)
    body = stream.read(length)
    if len(body) < length:
        raise TrainerWireError(f"trainer pipe closed after {len(body)} of a frame's {length} bytes")
    return unpack(body)


async def read_frame_async(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """``read_frame`` for an asyncio stream (the service's end)."""
    try:
        prefix = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TrainerWireError("trainer pipe closed inside a frame's length") from None
    length = _length(prefix)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TrainerWireError(f"trainer pipe closed after {len(exc.partial)} of a frame's {length} bytes") from None
    return unpack(body)
