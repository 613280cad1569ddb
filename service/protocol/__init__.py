"""Wire protocol v1: message schemas, pure encode/decode functions, topics, model cards (no sockets here).

The public face of the layer; ``docs/protocol.md`` is its prose version.
"""

from . import topics
from .codec import (ProtocolError, UnknownKindError, Limits, DEFAULT_LIMITS, wire_dtype, dtype_name,
    as_wire_array, array_spec, encode, decode, unpack_header, validate_header, validate_tolerant,
    split_envelope, buffer_to_array, arrays_from)
from .messages import (Axis, PixelSize, ArraySpec, ScanStart, Data, Frame, ScanEnd, ScanStarted, Maps,
    FrameResult, Event, Rejection, RecognizerSummary, ScanSummary, Status, Request, Reply, TrainUpdate, PROTOCOL_VERSION,
    PROTOCOL_REVISION, MAX_EDGE, DType, EventCode, ControlOp, Message, MESSAGE_ADAPTER, INGEST_KINDS, ScanId, Name, line_slice)
from .model_card import (CARD_KEY, InputSpec, OutputSpec, ModelCard, NoveltySpec, card_from_metadata)
from .schema import protocol_schema, protocol_schema_text

__all__ = [
    "ArraySpec", "Axis", "CARD_KEY", "ControlOp", "DEFAULT_LIMITS", "DType", "Data", "Event", "EventCode",
    "Frame", "FrameResult", "INGEST_KINDS", "InputSpec", "Limits", "MAX_EDGE", "MESSAGE_ADAPTER", "Maps",
    "Message", "ModelCard", "Name", "NoveltySpec", "OutputSpec", "PROTOCOL_REVISION", "PROTOCOL_VERSION", "PixelSize",
    "ProtocolError", "RecognizerSummary", "Rejection", "Reply", "Request", "ScanEnd", "ScanId", "ScanStart",
    "ScanStarted",
    "ScanSummary", "Status", "TrainUpdate", "UnknownKindError", "array_spec", "arrays_from", "as_wire_array",
    "buffer_to_array", "card_from_metadata", "decode", "dtype_name", "encode", "line_slice", "split_envelope",
    "unpack_header", "validate_header", "validate_tolerant", "wire_dtype", "protocol_schema",
    "protocol_schema_text", "topics",
]
