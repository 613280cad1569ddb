"""JSON text of the simulators' frozen config dataclasses: one ``to_json`` / ``from_json`` for all of them.

Every field is written under its name with sorted keys; a field holding a pydantic model (an
:class:`~scanlens.protocol.messages.Axis`) is written as its ``model_dump()``. Reading rebuilds those
models and turns JSON lists back into tuples where the field's default is a tuple, then calls the
config class, which validates (and normalises) the values. Equal configs give equal text, which the
ground-truth files store.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Self, TypeVar

from pydantic import BaseModel

_C = TypeVar("_C")


def config_to_json(cfg: Any) -> str:
    """JSON text of the config dataclass ``cfg`` (sorted keys, pydantic models as dicts)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for name, value in fields.items():
        if isinstance(value, BaseModel):
            fields[name] = value.model_dump()
    return json.dumps(fields, sort_keys=True)


def config_from_json(cls: type[_C], text: str) -> _C:
    """The config of class ``cls`` that :func:`config_to_json` wrote as ``text``.

    Keys missing from ``text`` take the field's default, except fields holding a pydantic model, which
    must be present.
    """
    values: dict[str, Any] = json.loads(text)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(f.default, BaseModel):
            values[f.name] = type(f.default)(**values[f.name])
        elif isinstance(f.default, tuple) and f.name in values:
            values[f.name] = tuple(values[f.name])
    return cls(**values)


class JSONConfig:
    """Mixin that gives a frozen config dataclass ``to_json`` and ``from_json`` (see the module notes)."""

    def to_json(self) -> str:
        return config_to_json(self)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return config_from_json(cls, text)
