"""Live training of a spectral recognizer from the operator's labelled pixels of a running scan.

The trainer (``worker.py``) calls :func:`train_spectral` with the labelled pixels exactly as the instrument
sent them, on the scan's own axis: EELS counts, BE-PFM amplitude and phase, switching loops, any channel
count. It has seconds, not minutes, and a few hundred to a few thousand pixels, so the network is small and
everything it needs to read raw input is inside the ONNX graph:

* **Normalisation** (:class:`LiveSpectralNet`). A component whose labelled values are count-like (at least
  :data:`COUNT_LIKE_SHARE` of them >= 0: EELS counts, a BE-PFM amplitude) is replaced by its square root
  (negative values clamped to 0), other components (a phase, a signed loop) pass as they are; then every
  feature is standardised with the training part's mean and std. The square root stabilises Poisson noise
  (its spread no longer grows with the counts) and turns a change of dose or thickness, which scales a
  spectrum, into a shift along one direction: so the novelty score's subspace holds the dose direction and
  its residual units do not depend on the dose. Measured (3 seeds) on EELS-like counts, three classes of
  peaks, 150 labelled pixels at 0.7-1.4 x a dose, unlabelled known pixels at 0.5-0.7 x and at 1.4-2 x:
  per-feature z-scoring alone flags 66 % of the brighter ones as novel; dividing each spectrum by its mean
  (its log-mean kept as a feature) flags 71 % of the dimmer ones and, on an amplitude/phase case whose third
  class differs by a weak amplitude, misclassifies 18 % of the pixels; the square root flags 9 % of the
  dimmer and 0.1 % of the brighter ones and classifies every pixel of both cases right.
* **Network**: ``Linear -> SiLU -> Dropout`` (``HIDDEN`` wide), a linear layer to one logit per class, softmax
  of the logits divided by a temperature fitted on the validation part (only ever >= 1: see :func:`_temperature`).
* **Novelty** (``models/novelty.py``'s ``SubspaceNovelty``): the squared distance of the standardised
  features from the principal subspace of all labelled pixels, per feature in units of their residual. Its
  threshold is the :data:`QUANTILE` quantile of *cross-fitted* scores: each of :data:`NOVELTY_FOLDS` folds
  of the labelled pixels scored by a subspace fitted on the others, so that every labelled pixel gives one
  held-out score (the validation part alone, 20 % of 150 pixels, would put the threshold at the largest of
  30 scores, a noisy figure). The final subspace is fitted on all of them, so a new pixel of a labelled
  class scores a little lower than in the folds: the threshold errs towards fewer false alarms. Each fit
  takes at most ``sqrt(NOVELTY_FIT_COST / features)`` of the pixels, an equal share per class (an SVD costs
  ``pixels^2 x features``).
* **Mixtures** (:func:`_mixup`): an operator labels the obvious middle of each region, but a boundary pixel
  holds two phases under the probe, and its spectrum is their sum. Half of every batch is such a mixture of
  two labelled pixels of different classes in random proportion, labelled as the dominant one. Measured on
  the CaTiO3 / interface / NdGaO3 demo sample (``scanlens demo --live-train``, 1.9 % of the pixels labelled
  in the layers' cores): without mixtures 0.979 of the unlabelled pixels right, the interface class 0.896,
  its errors all on the layers' borders.
* **Drift** (:func:`drift_spread`, :func:`_shifted`): a spectrum's features can move along the axis over a
  scan (a resonance that follows the local contact stiffness, the energy zero of a spectrometer), and the
  labelled pixels show only part of that range. Every training sample (a mixture as a whole) is shifted, all
  its components together, by a random amount, uniform within +- the labelled pixels' own within-class
  spread of shifts (each pixel's lag of best cross-correlation with its class's mean spectrum; pooled
  standard deviation), at most :data:`SHIFT_MAX_SHARE` of the channels, none below
  :data:`SHIFT_MIN_CHANNELS`: the data say how much. BE-PFM bacteria (``scanlens demo --live-train --modality
  bepfm``, 4.5 % labelled at 80 % of the rows, spread over the seen area as ``models/demo/live_train.py``
  does, seeds 0-9, scored on every unlabelled pixel): the spread is 9-12 channels (of 128); the worst seed's
  accuracy goes from 0.965 (mean 0.982) without shifts to 0.987 (mean 0.991), spore recall from >= 0.92 to
  >= 0.987. Fixed shifts of +-2 / 5 / 10 / 15 / 20 channels gave a worst seed of 0.964 / 0.982 / 0.986 /
  0.981 / 0.965. EELS (CaTiO3 / interface / NdGaO3, whose interface has a Ti3+ edge of lower onset): the
  spread is 0.13-0.16 channels, so no shift; a fixed +-10 channels (2.5 eV) lowered the mean of seeds 0-9
  from 0.993 to 0.987 and +-40 to 0.981. Measured on BE-PFM as above without shifts, and not kept: a random
  gain on the count-like components, exp(N(0, 0.1)) / exp(N(0, 0.25)), worst seed 0.913 / 0.884 (an
  amplitude tells the classes apart); weight decay 1e-2 or 1e-1 instead of 1e-4, dropout 0.3, 32 or 16
  hidden units: means within 0.003 of the default's, worst seeds 0.957-0.966 against its 0.965.
* **Budget**: the epochs are planned from the data (about :data:`TARGET_STEPS` optimiser steps, one-cycle
  learning rate over them), training stops early when it has converged (:data:`CONVERGED_LOSS`, a rule on
  the losses, so deterministic) or when :data:`TRAIN_SHARE_OF_BUDGET` of ``budget_s`` is spent (the schedule
  is then cut short), which leaves the rest for the novelty fit and the export (about 1-1.5 s on one core).
  For a seed, a thread count and a budget that does not bind, the run is deterministic.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from scanlens.models.export import export_reporting, read_card
from scanlens.models.novelty import OUTPUT_NAME as NOVELTY_OUTPUT
from scanlens.models.novelty import QUANTILE, NoveltyFit, SubspaceNovelty, WithNovelty, fit_temperature, novelty_output
from scanlens.models.subspace import fit_subspace
from scanlens.models.training import PCT_START, WEIGHT_DECAY, parity_inputs, seeded_run, silu_mlp
from scanlens.protocol.messages import Axis
from scanlens.protocol.model_card import InputSpec, ModelCard, NoveltySpec, OutputSpec

log = logging.getLogger(__name__)

VERSION = "1"
INPUT_NAME = "spectra"
OUTPUT_NAMES = ("probabilities", NOVELTY_OUTPUT)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
HIDDEN = (64,)
DROPOUT = 0.1
LR = 3e-3
#: share of each class's labelled pixels held out for validation (at least 1, at most all but 1)
VALIDATION_SHARE = 0.2
#: training stops when this share of the job's budget is spent, leaving the rest for calibration and export
TRAIN_SHARE_OF_BUDGET = 0.6
#: the planned optimiser steps: epochs = TARGET_STEPS / batches per epoch, within [MIN_EPOCHS, MAX_EPOCHS]
TARGET_STEPS = 400
MIN_EPOCHS, MAX_EPOCHS = 8, 150
MIN_BATCH, MAX_BATCH = 32, 256
#: converged: the mean training loss below this for CONVERGED_EPOCHS epochs in a row, validation all right
CONVERGED_LOSS = 0.02
CONVERGED_EPOCHS = 3
#: share of each batch replaced by mixtures of two labelled pixels of different classes (module docstring)
MIXUP_SHARE = 0.5
#: a component is count-like when at least this share of its labelled values is >= 0: a dark-subtracted
#: spectrum has a few slightly negative channels
COUNT_LIKE_SHARE = 0.99
#: every training sample is shifted along the axis by a random amount, uniform within +- SHIFT_SPREAD times
#: the labelled pixels' own within-class spread of peak positions (:func:`drift_spread`), at most
#: SHIFT_MAX_SHARE of the channels (module docstring)
SHIFT_SPREAD = 1.0
SHIFT_MAX_SHARE = 0.125
#: a drift below this many channels is the estimate's noise (EELS edges at fixed energies: 0.1-0.2): no shift
SHIFT_MIN_CHANNELS = 0.5
#: the largest shift (a share of the channels) that :func:`drift_spread` looks for
DRIFT_SEARCH_SHARE = 0.25
DRIFT_MAX_PIXELS = 500
#: the least normalised correlation between a pixel and its shifted class mean for its shift to count
DRIFT_MIN_MATCH = 0.5
NOVELTY_FOLDS = 5
NOVELTY_MAX_COMPONENTS = 16
#: the novelty subspace is fitted on at most sqrt(NOVELTY_FIT_COST / features) pixels, within these bounds
NOVELTY_FIT_COST = 2.5e8
NOVELTY_MIN_FIT, NOVELTY_MAX_FIT = 200, 2000
NOVELTY_FEATURES = "the network's standardised input features"
#: the temperature may only soften the validation-fitted probabilities, up to this
MAX_TEMPERATURE = 10.0

# --------------------------------------------------------------------------- network


class LiveSpectralNet(nn.Module):
    """Raw pixels ``[n, channels]`` or ``[n, channels, components]`` -> class probabilities; the normalisation
    (module docstring) is in the graph, its constants are buffers fitted by :meth:`fit_normalization`."""

    def __init__(self, channels: int, n_components: int | None, count_like: Sequence[bool], n_classes: int,
                 hidden: Sequence[int] = HIDDEN, dropout: float = DROPOUT):
        super().__init__()
        k = 1 if n_components is None else n_components
        if len(count_like) != k:
            raise ValueError(f"count_like has {len(count_like)} entries for {k} components")
        self.channels, self.n_components, self.k = channels, n_components, k
        self.count_like = tuple(bool(c) for c in count_like)
        self.n_features = channels * k
        self.register_buffer("count_mask", torch.tensor(self.count_like, dtype=torch.float32))
        self.register_buffer("mean", torch.zeros(self.n_features))
        self.register_buffer("std", torch.ones(self.n_features))
        self.register_buffer("temperature", torch.ones(()))
        body, width = silu_mlp(self.n_features, hidden)
        self.body = nn.Sequential(body, nn.Dropout(dropout))
        self.head = nn.Linear(width, n_classes)
        self.hidden = tuple(hidden)

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, channels * k]``, channel-major: the square root of count-like components (clamped at 0), the
        others as they are."""
        flat = x.reshape(x.shape[0], self.n_features)
        if not any(self.count_like):
            return flat
        root = torch.sqrt(flat.clamp_min(0.0))
        if all(self.count_like):
            return root
        mask = self.count_mask.repeat(self.channels)  # channel-major, like the flattened input
        return mask * root + (1.0 - mask) * flat

    def novelty_features(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised features: what the network and the novelty head both read."""
        return (self.raw_features(x) - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.novelty_features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x) / self.temperature, dim=-1)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Mean and std of the features of the training part ``x``."""
        f = self.raw_features(x).double()
        std = f.std(dim=0) if len(f) > 1 else torch.ones(f.shape[1], dtype=torch.float64)
        floor = 1e-3 * float(std.median()) + 1e-12  # a feature constant in training: a floor in the data's units
        self.mean.copy_(f.mean(dim=0).float())
        self.std.copy_(std.clamp_min(floor).float())

    def architecture(self) -> str:
        """The card's architecture string; equal strings mean a model can be fine-tuned from the other."""
        comps = "" if self.n_components is None else f" x {self.n_components} components"
        counts = ", ".join("count-like" if c else "as is" for c in self.count_like)
        dims = " -> ".join(str(d) for d in (self.n_features, *self.hidden))
        return (f"live MLP: {self.channels} channels{comps} ({counts}) -> {dims} (SiLU, dropout {DROPOUT:g}) -> "
                f"{self.head.out_features} (softmax / temperature); normalisation in graph; subspace novelty head")

    def normalization(self) -> str:
        """The card's ``input.normalization``."""
        if all(self.count_like):
            first = "sqrt(max(x, 0)) (variance-stabilised counts)"
        elif not any(self.count_like):
            first = "x as it is"
        else:
            which = ", ".join(str(i) for i, c in enumerate(self.count_like) if c)
            first = f"sqrt(max(x, 0)) of the count-like component(s) {which}, the signed components as they are"
        return f"{first}; flattened channel-major; then per-feature (x - mean) / std with the training part's constants"


def is_count_like(x3: np.ndarray) -> list[bool]:
    """Per component of ``[n, channels, k]``: whether its values look like counts (see COUNT_LIKE_SHARE)."""
    return [bool(np.mean(x3[..., c] >= 0) >= COUNT_LIKE_SHARE) for c in range(x3.shape[2])]


# --------------------------------------------------------------------------- input checks


def _validate(x: np.ndarray, y: np.ndarray, classes: list[str], axis: dict, components: list[str] | None,
              name: str, modality: str, budget_s: float) -> tuple[np.ndarray, np.ndarray, Axis]:
    """Checked, owned copies of (x float32, y int64) and the axis; ValueError saying what is wrong."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} is not 1-64 characters of letters, digits, '.', '_' or '-'")
    if not isinstance(modality, str) or not NAME_PATTERN.match(modality):
        raise ValueError(f"modality {modality!r} is not 1-64 characters of letters, digits, '.', '_' or '-'")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if not isinstance(classes, (list, tuple)) or not 2 <= len(classes) <= 255 or not all(
            isinstance(c, str) and c for c in classes):
        raise ValueError(f"classes must be 2 to 255 non-empty names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must differ, got {list(classes)}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be [n, channels] or [n, channels, components], got shape {list(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be [n] with one label per pixel of x: x has shape {list(x.shape)}, "
                         f"y {list(y.shape)}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"x must be numbers (float32), got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be class indices (uint8), got {y.dtype}")
    try:
        ax = Axis(**axis)
    except Exception as exc:
        raise ValueError(f"bad axis {axis!r}: {exc}".replace("\n", " ")) from None
    if ax.size != x.shape[1]:
        raise ValueError(f"the axis has {ax.size} channels but x has {x.shape[1]}")
    if x.ndim == 3:
        if components is None or len(components) != x.shape[2]:
            raise ValueError(f"x has {x.shape[2]} components per channel; components must name them, "
                             f"got {components!r}")
        if len(set(components)) != len(components):
            raise ValueError(f"component names must differ, got {components}")
    elif components is not None:
        raise ValueError(f"components {components!r} given but x is [n, channels] (one value per channel)")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        bad = int(y.max()) if y.max() >= len(classes) else int(y.min())
        raise ValueError(f"label {bad} is not a class index: there are {len(classes)} classes (0..{len(classes) - 1})")
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = f"only {classes[present[0]]!r}" if len(present) else "none"
        raise ValueError(f"at least 2 classes must have labelled pixels; {only} has")
    few = [f"{classes[c]!r} has {counts[c]}" for c in present if counts[c] < 2]
    if few:
        raise ValueError(f"each labelled class needs at least 2 pixels: {', '.join(few)}; label more of it or "
                         "drop the class")
    x = np.array(x, dtype=np.float32)  # an owned, writable copy (pipe buffers are read-only)
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        raise ValueError(f"x has non-finite values (NaN or inf) in {len(bad)} labelled pixels (the first is pixel "
                         f"{int(bad[0])})")
    return x, y, ax


def stratified_split(y: np.ndarray, seed: int, share: float = VALIDATION_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices, sorted: per class ``round(share * n)`` pixels held out, at least 1 and at
    most all but 1 (each class has at least 2)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = min(len(idx) - 1, max(1, round(share * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# --------------------------------------------------------------------------- base model


#: buffers not taken from a base: the count mask follows from the architecture string (which must match), the
#: temperature is fitted again (and the exporter folds a temperature of 1 away)
_NOT_LOADED = ("count_mask", "temperature")


def _load_base(net: LiveSpectralNet, base: str | PathLike[str], classes: list[str], ax: Axis,
               components: list[str] | None) -> None:
    """Load an earlier live model's weights and normalisation into ``net``; ValueError when it does not fit."""
    import onnx
    from onnx import numpy_helper

    hint = "fine-tuning from that model is not possible; omit base to train from scratch"
    path = Path(base)
    try:
        card = read_card(path)
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"base {str(path)!r} is not a readable model ({type(exc).__name__}: {exc}); "
                         f"{hint}".replace("\n", " ")) from None
    labels = next((o.labels for o in card.outputs if o.role == "class_probabilities"), None)
    if card.architecture != net.architecture():
        raise ValueError(f"base {card.name!r} has architecture {card.architecture!r}, this data needs "
                         f"{net.architecture()!r}; {hint}")
    if card.input.axis is None or card.input.axis.size != ax.size or card.input.components != components:
        raise ValueError(f"base {card.name!r} takes other input ({card.input.axis and card.input.axis.size} channels, "
                         f"components {card.input.components}); {hint}")
    if labels != list(classes):
        raise ValueError(f"base {card.name!r} has classes {labels}, this request {list(classes)}; {hint}")
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    state = net.state_dict()
    loaded = {}
    for key, value in state.items():
        if key in _NOT_LOADED:
            continue
        got = weights.get(f"net.{key}")
        if got is None or tuple(got.shape) != tuple(value.shape):
            raise ValueError(f"base {card.name!r} has no tensor {key!r} of shape {list(value.shape)}; {hint}")
        loaded[key] = torch.from_numpy(np.array(got, dtype=np.float32))
    net.load_state_dict({**state, **loaded})


# --------------------------------------------------------------------------- training


def _plan(n_train: int) -> tuple[int, int]:
    """(batch, epochs) for ``n_train`` pixels: about TARGET_STEPS optimiser steps."""
    batch = int(min(MAX_BATCH, max(MIN_BATCH, 2 ** round(math.log2(max(n_train, 1) / 8)))))
    batch = min(batch, n_train)
    steps_per_epoch = math.ceil(n_train / batch)
    epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(TARGET_STEPS / steps_per_epoch))))
    return batch, epochs


@torch.no_grad()
def _logits(net: LiveSpectralNet, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    net.eval()
    return torch.cat([net.logits(x[i:i + batch]) for i in range(0, len(x), batch)])


def _temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The validation-fitted temperature, clamped to [1, MAX_TEMPERATURE]: a small validation part that is
    classified without error keeps lowering its loss as T -> 0, which would only make every answer look
    certain; it may soften an overconfident network, never sharpen it."""
    return float(min(MAX_TEMPERATURE, max(1.0, fit_temperature(logits, labels))))


def _novelty_rows(y: np.ndarray, rows: np.ndarray, d: int, seed: int) -> np.ndarray:
    """At most ``NOVELTY_FIT_COST / d`` squared of ``rows`` (indices into ``y``), an equal quota per class: the
    SVD of ``n x d`` costs ``n^2 d`` (2000 x 2049 took 3.6 s on one core, 350 x 2049 0.07 s), and a class labelled
    far less than the others still shapes the subspace."""
    cap = int(min(NOVELTY_MAX_FIT, max(NOVELTY_MIN_FIT, math.sqrt(NOVELTY_FIT_COST / d))))
    if len(rows) <= cap:
        return rows
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    labels = np.unique(y[rows])
    quota = max(1, cap // len(labels))
    pick = [rng.permutation(rows[y[rows] == c])[:quota] for c in labels]
    return np.sort(np.concatenate(pick))


#: the smallest per-feature residual variance of the novelty head, in the standardised features' units (their
#: variance is about 1): labelled pixels without noise (synthetic data) would otherwise leave a residual of float
#: round-off, whose inverse turns float32 rounding into novelty scores that torch and ONNX Runtime disagree on
RESIDUAL_VAR_FLOOR = 1e-3


def _subspace(features: np.ndarray, components: int):
    sub = fit_subspace(features, components=components, max_fit=len(features))
    return dataclasses.replace(sub, residual_var=np.maximum(sub.residual_var, RESIDUAL_VAR_FLOOR))


def _fit_novelty(features: np.ndarray, y: np.ndarray, seed: int) -> NoveltyFit:
    """The subspace head on the labelled pixels' standardised features, its threshold at QUANTILE of the
    cross-fitted scores (module docstring)."""
    n, d = features.shape
    folds = min(NOVELTY_FOLDS, n)
    fold_of = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))).permutation(n) % folds
    everything = np.arange(n)
    fold_rows = [_novelty_rows(y, everything[fold_of != f], d, seed + 1 + f) for f in range(folds)]
    n_classes = len(np.unique(y))
    components = int(max(1, min(NOVELTY_MAX_COMPONENTS, 2 * n_classes + 4, min(map(len, fold_rows)) // 3)))
    held = np.empty(n)
    for f, rows in enumerate(fold_rows):
        sub = _subspace(features[rows], components)
        held[fold_of == f] = sub.scores(features[fold_of == f])
    rows = _novelty_rows(y, everything, d, seed)
    final = _subspace(features[rows], components)
    head = SubspaceNovelty(final.mean, final.basis, final.residual_var).eval()
    threshold = float(np.quantile(held, QUANTILE))
    method = (f"squared distance of {NOVELTY_FEATURES} from the {components}-dimensional principal subspace of the "
              f"labelled pixels, per feature in units of their residual; threshold at the {QUANTILE:g} quantile "
              f"of {folds}-fold cross-fitted held-out scores of the labelled pixels")
    calibration = {"quantile": QUANTILE, "components": float(components), "n_fit": float(final.n_fit),
                   "folds": float(folds), "n_heldout": float(n), "heldout_flagged": float(np.mean(held > threshold))}
    return NoveltyFit(head, threshold, method, calibration)


def _mixup(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch ``idx`` with :data:`MIXUP_SHARE` of it replaced by ``w a + (1 - w) b`` of a pixel ``a`` and a
    random partner ``b`` of another class, ``w`` uniform in [0, 1], labelled as the class that dominates
    (``a``'s if ``w >= 0.5``): what a boundary pixel of a spectrum image is (both phases under the probe, the
    signal a sum), so that the network puts its border between two classes where either is half (the ground
    truth of a phase map is the dominant phase), not wherever the labelled cores happen to leave it. Returns
    the inputs, the labels and which samples are mixtures."""
    partner = idx[torch.randperm(len(idx), generator=gen)]
    w = torch.rand(len(idx), generator=gen)
    mixed = (torch.rand(len(idx), generator=gen) < MIXUP_SHARE) & (y[partner] != y[idx])
    a, b = x[idx], x[partner]
    wb = w.view(-1, *([1] * (a.dim() - 1)))
    xb = torch.where(mixed.view_as(wb), wb * a + (1 - wb) * b, a)
    yb = torch.where(mixed & (w < 0.5), y[partner], y[idx])
    return xb, yb, mixed


def drift_spread(features: np.ndarray, y: np.ndarray) -> float:
    """How far the labelled pixels' spectra move along the axis within a class, in channels: the pooled
    within-class standard deviation of each pixel's shift against its class's mean spectrum (the lag of the
    largest cross-correlation per overlapping channel, refined by a parabola through its neighbours, searched
    up to :data:`DRIFT_SEARCH_SHARE` of the channels; at most :data:`DRIFT_MAX_PIXELS` evenly spaced pixels of a
    class). ``features`` ``[n, channels, k]``: the network's raw features (square roots of the count-like
    components); each component is scaled to unit spread and each pixel's mean along the axis removed, so that
    the shape, not the level, is matched. A pixel counts only where the shifted class mean matches it (a
    normalised correlation of at least :data:`DRIFT_MIN_MATCH`): in a featureless spectrum the best lag is
    noise. A resonance whose frequency follows the local stiffness moves by ~10 channels in a BE-PFM scan
    (correlations 0.45-0.97); EELS edges at fixed energies by ~0.15 (0.996); Poisson noise correlates 0.06-0.27."""
    n, channels, k = features.shape
    reach = int(DRIFT_SEARCH_SHARE * channels)
    if reach < 2:
        return 0.0
    rows = np.concatenate([np.flatnonzero(y == c)[np.linspace(0, np.sum(y == c) - 1, min(int(np.sum(y == c)),
                                                                                         DRIFT_MAX_PIXELS)).round()
                                                  .astype(int)] for c in np.unique(y)])
    f = features[rows].astype(np.float64)
    labels = y[rows]
    f = f / np.maximum(f.reshape(-1, k).std(axis=0), 1e-12)
    f = f - f.mean(axis=1, keepdims=True)
    size = 2 * channels  # zero padding: no wrap-around within +-channels
    lags = np.arange(-reach, reach + 1)
    overlap = channels - np.abs(lags)
    variance, counted = 0.0, 0
    for c in np.unique(labels):
        fc = f[labels == c]
        mean = fc.mean(axis=0)
        spectrum = np.fft.rfft(fc, n=size, axis=1)
        template = np.fft.rfft(mean, n=size, axis=0)
        corr = np.fft.irfft((spectrum * np.conj(template)[None]).sum(axis=2), n=size, axis=1)[:, lags % size]
        match = corr.max(axis=1) / np.maximum(np.sqrt((fc ** 2).sum(axis=(1, 2)) * (mean ** 2).sum()), 1e-12)
        score = corr / overlap  # score[:, lag]: the mean over the overlap of pixel[j + lag] * template[j]
        j = np.clip(score.argmax(axis=1), 1, len(lags) - 2)
        at = np.arange(len(fc))
        y0, y1, y2 = score[at, j - 1], score[at, j], score[at, j + 1]
        curve = y0 - 2 * y1 + y2
        step = np.where(curve < 0, 0.5 * (y0 - y2) / np.where(curve < 0, curve, -1.0), 0.0)
        shift = (lags[j] + np.clip(step, -0.5, 0.5))[match >= DRIFT_MIN_MATCH]
        if len(shift) >= 2:
            variance += float(np.sum((shift - shift.mean()) ** 2))
            counted += len(shift) - 1
    return math.sqrt(variance / counted) if counted else 0.0


def _shifted(xb: torch.Tensor, max_shift: float, gen: torch.Generator) -> torch.Tensor:
    """``xb`` ``[n, channels]`` or ``[n, channels, k]``, each sample moved along the axis by its own random
    amount, uniform in ``[-max_shift, max_shift]`` channels (linear interpolation, the end channels repeated):
    a drift of a resonance or of the energy zero, which moves every component together."""
    n, channels = xb.shape[0], xb.shape[1]
    if max_shift <= 0 or channels < 2:
        return xb
    x3 = xb.reshape(n, channels, -1)
    d = (2 * torch.rand(n, 1, generator=gen) - 1) * max_shift
    pos = (torch.arange(channels, dtype=torch.float32).view(1, -1) - d).clamp(0, channels - 1)
    lo = pos.floor().long().clamp(max=channels - 2)
    frac = (pos - lo.float()).unsqueeze(-1)
    index = lo.unsqueeze(-1).expand(-1, -1, x3.shape[2])
    moved = (1 - frac) * torch.gather(x3, 1, index) + frac * torch.gather(x3, 1, index + 1)
    return moved.reshape(xb.shape)


def train_spectral(x: np.ndarray, y: np.ndarray, *, classes: list[str], axis: dict, components: list[str] | None,
                   name: str, modality: str, out_path: str, budget_s: float, seed: int = 0,
                   provenance: dict | None = None, base: str | None = None,
                   progress: Callable[[dict], None] | None = None, threads: int = 1) -> dict[str, float]:
    """Train a spectral recognizer on labelled pixels, export it to ``out_path`` with its card, check ONNX
    Runtime against torch; returns the metrics (those on the card and ``onnx_max_abs_diff``).

    ``x``: float32 ``[n, channels]`` or ``[n, channels, len(components)]``, raw, on the scan's ``axis``
    (``{size, offset, scale, units}``); ``y``: ``[n]`` 0-based indices into ``classes``. ``progress`` gets
    ``{"epoch", "epochs", "loss", "val_accuracy"}`` after every epoch. ``base``: an earlier live model of the
    same architecture and classes to start from. ValueError on bad input (the message says what to fix).
    """
    start = time.perf_counter()
    x, y, ax = _validate(x, y, classes, axis, components, name, modality, budget_s)
    classes = list(classes)
    n = len(x)
    deadline = start + TRAIN_SHARE_OF_BUDGET * float(budget_s)
    # numpy's BLAS as many threads as torch: on 2 shared cores an oversubscribed SVD took 14 s instead of 0.1
    with seeded_run(seed, threads), threadpool_limits(threads, "blas"):
        train_idx, val_idx = stratified_split(y, seed)
        x3 = x.reshape(n, x.shape[1], -1)
        net = LiveSpectralNet(x.shape[1], None if x.ndim == 2 else x.shape[2], is_count_like(x3[train_idx]),
                              len(classes))
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(y)
        if base is not None:
            _load_base(net, base, classes, ax, components)
            lr = LR / 3  # a start that already knows the classes: a gentler schedule
        else:
            net.fit_normalization(xt[train_idx])
            lr = LR
        x_train, y_train = xt[train_idx], yt[train_idx]
        with torch.no_grad():
            raw = net.raw_features(x_train).numpy().reshape(len(train_idx), x.shape[1], -1)
        drift = drift_spread(raw, y[train_idx])
        max_shift = min(SHIFT_MAX_SHARE * x.shape[1], SHIFT_SPREAD * drift)
        max_shift = max_shift if max_shift >= SHIFT_MIN_CHANNELS else 0.0
        x_val, y_val = xt[val_idx], yt[val_idx]
        batch, epochs = _plan(len(train_idx))
        steps_per_epoch = math.ceil(len(train_idx) / batch)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                    pct_start=PCT_START)
        gen = torch.Generator().manual_seed(seed)
        stopped, done, loss_value, val_acc, low_loss = "planned epochs", 0, float("nan"), float("nan"), 0
        for epoch in range(epochs):
            t_epoch = time.perf_counter()
            net.train()
            order = torch.randperm(len(train_idx), generator=gen)
            running, clean, n_clean = 0.0, 0.0, 0
            for s in range(0, len(order), batch):
                idx = order[s:s + batch]
                xb, yb, mixed = _mixup(x_train, y_train, idx, gen)
                xb = _shifted(xb, max_shift, gen)
                losses = nn.functional.cross_entropy(net.logits(xb), yb, reduction="none")
                loss = losses.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.detach().item() * len(idx)
                clean += float(losses.detach()[~mixed].sum())
                n_clean += int((~mixed).sum())
            loss_value = running / len(order)
            clean_loss = clean / max(n_clean, 1)  # on the labelled pixels themselves: what convergence means
            val_acc = float((_logits(net, x_val).argmax(dim=1) == y_val).float().mean())
            done = epoch + 1
            if progress is not None:
                progress({"epoch": done, "epochs": epochs, "loss": loss_value, "val_accuracy": val_acc})
            low_loss = low_loss + 1 if clean_loss < CONVERGED_LOSS and val_acc == 1.0 else 0
            if low_loss >= CONVERGED_EPOCHS:
                stopped = "converged"
                break
            now = time.perf_counter()
            if done < epochs and now + (now - t_epoch) > deadline:
                stopped = "budget"
                break
        net.eval()
        train_seconds = time.perf_counter() - start

        val_logits = _logits(net, x_val).numpy()
        net.temperature.fill_(_temperature(val_logits, y_val.numpy()))
        with torch.no_grad():
            features = net.novelty_features(xt).numpy()
        novelty = _fit_novelty(features, y, seed)
        novelty.calibration["validation_flagged"] = novelty.flagged(features[val_idx])
        train_acc = float((_logits(net, x_train).argmax(dim=1) == y_train).float().mean())
        metrics = {"val_accuracy": val_acc, "train_accuracy": train_acc, "final_train_loss": float(loss_value),
                   "temperature": float(net.temperature), "novelty_threshold": novelty.threshold,
                   "train_seconds": train_seconds}
        seconds = time.perf_counter() - start

        counts = np.bincount(y, minlength=len(classes))
        training: dict[str, Any] = {
            **(provenance or {}),
            "labelled_pixels": int(n),
            "label_counts": {c: int(k) for c, k in zip(classes, counts)},
            "train_pixels": int(len(train_idx)),
            "validation_pixels": int(len(val_idx)),
            "epochs": int(done),
            "epochs_planned": int(epochs),
            "stopped": stopped,
            "batch": int(batch),
            "optimizer": f"AdamW lr {lr:g} one-cycle over the planned epochs, weight_decay {WEIGHT_DECAY:g}",
            "loss": "cross-entropy",
            "augmentation": (f"{MIXUP_SHARE:g} of each batch mixtures of two classes; "
                             + (f"every sample shifted along the axis by up to {max_shift:.2f} channels" if max_shift
                                else "no shift along the axis")
                             + f" (the labelled pixels' within-class drift: {drift:.2f} channels)"),
            "split": f"stratified, {VALIDATION_SHARE:g} of each class held out for validation (seed {seed})",
            "seed": int(seed),
            "threads": int(threads),
            "budget_s": float(budget_s),
            "seconds": seconds,
            "base": None if base is None else str(base),
            "torch": torch.__version__,
        }
        card = _card(net, name=name, modality=modality, classes=classes, ax=ax, components=components,
                     training=training, metrics=metrics, novelty=novelty.spec(), provenance=provenance or {})
        model = WithNovelty(net, novelty.head).eval()
        diff = export_reporting(model, parity_inputs(x, 2048, seed), out_path, card, OUTPUT_NAMES)
    log.info("live model %s: %s in %.1fs (%d epochs, %s)", name, metrics, time.perf_counter() - start, done, stopped)
    return {**metrics, "onnx_max_abs_diff": float(diff)}


def _card(net: LiveSpectralNet, *, name: str, modality: str, classes: list[str], ax: Axis,
          components: list[str] | None, training: dict[str, Any], metrics: dict[str, float], novelty: NoveltySpec,
          provenance: dict) -> ModelCard:
    scan = provenance.get("scan_id") or provenance.get("scan")
    of_scan = f"scan {scan}" if scan else "a scan"
    return ModelCard(
        name=name,
        version=VERSION,
        modality=modality,
        description=(f"Trained live on {training['labelled_pixels']} labelled pixels of {of_scan} "
                     f"({', '.join(f'{c}: {k}' for c, k in training['label_counts'].items())}), on that scan's "
                     "axis; it knows only these classes and flags pixels unlike the labelled ones as novel."),
        architecture=net.architecture(),
        input=InputSpec(name=INPUT_NAME, axis=ax, components=None if components is None else list(components),
                        normalization=net.normalization()),
        outputs=[
            OutputSpec(name=OUTPUT_NAMES[0], role="class_probabilities", labels=list(classes),
                       description="softmax over the labelled classes (logits / temperature fitted on validation)"),
            novelty_output(f"distance of the standardised input from the principal subspace of the labelled "
                           f"pixels, per feature, in units of their residual"),
        ],
        training=training,
        metrics=metrics,
        novelty=novelty,
    )
