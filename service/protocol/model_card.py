"""The model card: what a recognizer expects and produces, stored as JSON in its ONNX metadata.

A recognizer is a single ONNX file; its ``metadata_props`` hold the card under ``CARD_KEY``. The
service reads nothing else about a model: input axis and units, outputs and their meaning, classes
and parameter names come from here, and the ``models`` control request returns the cards verbatim.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .messages import Axis, Name

CARD_KEY = "scanlens.card"


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Card):
    """The single model input: float32 ``[n, axis.size]``, or ``[n, axis.size, len(components)]`` when
    each channel carries several named components (e.g. BE-PFM amplitude and phase, the up and down
    branches of a switching loop)."""

    name: str
    axis: Axis
    components: list[str] | None = Field(default=None, min_length=1, max_length=16)
    normalization: str = Field(
        description="what the graph does to raw counts before the network (it is inside the ONNX graph)"
    )


class OutputSpec(_Card):
    """One ONNX output.

    ``class_probabilities`` ``[n, len(labels)]`` is published as ``class`` (uint8 argmax) and
    ``confidence`` (float32 max probability); ``parameters`` ``[n, len(labels)]`` is published under
    ``name`` as float32 with its labels and units.
    """

    name: str
    role: Literal["class_probabilities", "parameters"]
    labels: list[str] = Field(min_length=1, max_length=255)
    units: list[str] | None = None
    description: str = ""


class ModelCard(_Card):
    name: Name
    version: str
    modality: Name
    description: str
    architecture: str
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    training: dict[str, Any] = Field(
        default_factory=dict, description="generator, seed, sample counts, epochs, ..."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="held-out metrics")
