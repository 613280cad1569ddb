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
    service's post-processing, configured by the card's ``postprocess``; ``novelty`` ``[n]`` (one score per
    pixel or frame, higher = further from the training data) is published as ``novelty`` (float32) and
    ``novel`` (uint8, score above the card's ``novelty.threshold``).
    """

    name: str
    role: Literal["class_probabilities", "parameters", "segmentation", "novelty"]
    labels: list[str] = Field(min_length=1, max_length=255)
    units: list[str] | None = None
    description: str = ""


class NoveltySpec(_Card):
    """How a model tells its own kind of input from foreign input: the ``novelty`` output's meaning and the
    threshold above which a pixel (frame) is flagged novel, calibrated on held-out training-like data."""

    output: str = Field(description="the ONNX output of role novelty")
    threshold: float = Field(description="a pixel (frame) is novel when its score is above this")
    method: str = Field(description="how the score is computed")
    calibration: dict[str, float] = Field(
        default_factory=dict, description="quantile of the held-out scores the threshold sits at, the held-out "
                                          "fraction flagged, sample counts, fractions flagged on foreign data")


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
    novelty: NoveltySpec | None = Field(
        default=None, description="the novelty output and its threshold; None: the model cannot say when an "
                                  "input is unlike its training data (served without novelty)")

    @model_validator(mode="after")
    def _novelty_output(self) -> ModelCard:
        named = [o.name for o in self.outputs if o.role == "novelty"]
        if self.novelty is None and named:
            raise ValueError(f"output {named[0]!r} has role novelty but the card has no novelty section")
        if self.novelty is not None and named != [self.novelty.output]:
            raise ValueError(f"novelty.output {self.novelty.output!r} must be the card's one output of role "
                             f"novelty (found {named})")
        return self


def card_from_metadata(metadata: Mapping[str, str]) -> ModelCard:
    """The card stored under ``CARD_KEY`` in an ONNX model's metadata (the one reader of cards).

    KeyError when the model has none; ValueError (pydantic's ValidationError is one) when it is invalid.
    """
    raw = metadata.get(CARD_KEY)
    if raw is None:
        raise KeyError(f"no model card (metadata key {CARD_KEY!r})")
    return ModelCard.model_validate(json.loads(raw))
