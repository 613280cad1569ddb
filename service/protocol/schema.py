"""The JSON Schema of every protocol header and of the model card, as committed in ``docs/``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from .messages import MESSAGE_ADAPTER, PROTOCOL_VERSION
from .model_card import ModelCard


def protocol_schema() -> dict[str, Any]:
    schema = MESSAGE_ADAPTER.json_schema(ref_template="#/$defs/{model}")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"scanlens wire protocol v{PROTOCOL_VERSION}: message headers (msgpack maps)"
    card = TypeAdapter(ModelCard).json_schema(ref_template="#/$defs/{model}")
    schema.setdefault("$defs", {}).update(card.pop("$defs", {}))
    schema["$defs"]["ModelCard"] = card
    return schema


def protocol_schema_text() -> str:
    return json.dumps(protocol_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
