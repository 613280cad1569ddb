"""The model card: what a recognizer expects and produces, stored as JSON in its ONNX metadata.

A recognizer is a single ONNX file; its ``metadata_props`` hold the card under ``CARD_KEY``. The
service reads nothing else about a model: input axis and units, outputs and their meaning, classes
and parameter names come from here, and the ``models`` control request returns the cards verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .messages import Axis, Name, PixelSize

CARD_KEY = "scanlens.card"


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Card):
    """The single model input. Spectral models: float32 ``[n, axis.size]``, or
    ``[n, axis.size, len(components)]`` when each channel carries several named components (e.g. BE-PFM
    amplitude and phase, the up and down branches of a switching loop). Image models: float32
    ``[n, 1, height, width]`` at ``pixel_size`` (any height and width the network accepts)."""

    name: str
    axis: Axis | None = None
    components: list[str] | None = Field(default=None, min_length=1, max_length=16)
    pixel_size: PixelSize | None = None

    @model_validator(mode="after")
    def _spectral_or_image(self) -> InputSpec:
        if (self.axis is None) == (self.pixel_size is None):
            raise ValueError("an input has either an axis (spectra) or a pixel_size (images)")
        return self
    normalization: str = Field(
        description="what the graph does to raw counts before the network (it is inside the ONNX graph)"
    )


class OutputSpec(_Card):
    """One ONNX output.

    ``class_probabilities`` ``[n, len(labels)]`` is published as ``class`` (uint8 argmax) and
    ``confidence`` (float32 max probability); ``parameters`` ``[n, len(labels)]`` is published under
    ``name`` as float32 with its labels and units; ``segmentation`` ``[n, len(labels), h, w]`` (per-pixel
    class probabilities of an image model) is turned into a class map, atoms and defects by the
    service's post-processing, configured by the card's ``postprocess``.
    """

    name: str
    role: Literal["class_probabilities", "parameters", "segmentation"]
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
    postprocess: dict[str, Any] = Field(
        default_factory=dict, description="image models: which segmentation classes are atoms and defects, "
                                          "peak-finding parameters")


def card_from_metadata(metadata: Mapping[str, str]) -> ModelCard:
    """The card stored under ``CARD_KEY`` in an ONNX model's metadata (the one reader of cards).

    KeyError when the model has none; ValueError (pydantic's ValidationError is one) when it is invalid.
    """
    raw = metadata.get(CARD_KEY)
    if raw is None:
        raise KeyError(f"no model card (metadata key {CARD_KEY!r})")
    return ModelCard.model_validate(json.loads(raw))
