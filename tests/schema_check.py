"""Validate raw headers (msgpack maps as they came off the wire) against docs/protocol.schema.json."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
import msgpack

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "protocol.schema.json"


@cache
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def check_header_bytes(raw: bytes) -> dict:
    header = msgpack.unpackb(raw, raw=False)
    validator().validate(header)
    return header
