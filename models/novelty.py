"""Novelty heads and confidence calibration: what makes a recognizer say when it cannot vouch for an answer.

**Novelty** (``SubspaceNovelty``): each model maps its raw input to features (``novelty_features``:
variance-stabilised counts for EELS, the network's own standardised input elsewhere); the principal
subspace of the training features holds what the training data varies in. A pixel's score is its
squared distance from that subspace, per feature and in units of the training data's own residual
there (so a feature that is noisy in training counts less):

    score = mean_j ((f - m - B Bᵀ (f - m))_j² / v_j)

with ``m`` the training mean, ``B`` the top ``k`` principal directions and ``v`` the per-feature residual
variance, all fitted on training features and stored in the ONNX graph. Its threshold is the
``QUANTILE`` quantile of the scores of *held-out* training-like samples (not used for the fit), so that
share of the model's own kind of data is flagged; the card records it with the flagged fractions on
held-out scans and on foreign data (``NoveltySpec``). The fit itself is numpy (``fit_subspace``: the
constants as a ``Subspace``); ``fit_novelty`` wraps them in the torch head for networks, and
``fit_subspace_novelty`` keeps them in numpy for a hand-built graph (eels-fit, ``models/physics_fit.py``).

Features that are variance-stabilised counts (``f = 2 sqrt(c + 3/8)``, EELS) can carry a **counts floor**:
a subspace also holds the faint end of its own dose direction, so a spectrum far dimmer than any
training spectrum (flat noise at 2 counts per channel) lies close to it. With ``counts_floor`` set, the
score adds ``COUNTS_FLOOR_WEIGHT * max(0, log(floor) - log(mean counts))``, the counts recovered from the
features; training-like data, all above the floor, get nothing added.

Where the training data do not lie near a linear subspace (loops-mlp: a hard ferroelectric's loops lie
inside the span of the training loops but away from all of them), ``NearestNeighbourNovelty`` scores the
root-mean-square distance per feature from the ``k`` nearest of a bank of training features stored in
the graph (``fit_nearest_novelty``), thresholded the same way.

**Calibration** (``fit_temperature``): the classifier's logits are divided by one temperature, fitted by
minimising the negative log-likelihood on held-out samples; the expected calibration error before and
after is measured on held-out scans (``scanlens.models.scoring.expected_calibration_error``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from scanlens.models.subspace import COUNTS_FLOOR_WEIGHT, Subspace, fit_subspace
from scanlens.protocol.model_card import NoveltySpec, OutputSpec

#: The share of held-out training-like samples the threshold lets through: 0.5 % of them are flagged.
QUANTILE = 0.995
OUTPUT_NAME = "novelty"


class SubspaceNovelty(nn.Module):
    """Squared distance from the training features' principal subspace, per feature, in units of the
    training residual, plus the counts floor's term when ``counts_floor`` is given (see the module
    docstring). Input ``[n, d]`` features, output ``[n]`` scores."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, residual_var: np.ndarray,
                 counts_floor: float | None = None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))  # [d, k]
        self.register_buffer("inv_var", torch.as_tensor(1.0 / residual_var, dtype=torch.float32))
        self.counts_floor = counts_floor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = features - self.mean
        residual = z - (z @ self.basis) @ self.basis.T
        score = (residual * residual * self.inv_var).mean(dim=-1)
        if self.counts_floor is None:
            return score
        counts = ((features * 0.5) ** 2 - 0.375).mean(dim=-1).clamp_min(1e-3)
        return score + COUNTS_FLOOR_WEIGHT * torch.relu(math.log(self.counts_floor) - torch.log(counts))


class NearestNeighbourNovelty(nn.Module):
    """Root-mean-square distance per feature from the ``k`` nearest of a bank of training features (see
    the module docstring). Input ``[n, d]`` features, output ``[n]`` scores."""

    def __init__(self, bank: np.ndarray, k: int):
        super().__init__()
        bank = np.asarray(bank, np.float32)
        self.register_buffer("bank_t", torch.as_tensor(np.ascontiguousarray(bank.T)))  # [d, m]
        self.register_buffer("bank_sq", torch.as_tensor((bank.astype(np.float64) ** 2).sum(axis=1), dtype=torch.float32))
        self.k = int(k)
        self.n_features = bank.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        d2 = (features * features).sum(dim=-1, keepdim=True) + self.bank_sq - 2.0 * (features @ self.bank_t)
        nearest = torch.topk(d2, self.k, dim=-1, largest=False).values.clamp_min(0.0)
        return torch.sqrt(nearest / self.n_features).mean(dim=-1)


class _Thresholded:
    """What a fitted novelty score gives the training code: the share flagged and the card's section (the
    subclasses provide ``scores``, ``threshold``, ``method`` and ``calibration``)."""

    threshold: float
    method: str
    calibration: dict[str, float]

    def scores(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flagged(self, features: np.ndarray) -> float:
        """The share of these samples (features) whose score is above the threshold."""
        return float(np.mean(self.scores(features) > self.threshold))

    def spec(self) -> NoveltySpec:
        return NoveltySpec(output=OUTPUT_NAME, threshold=self.threshold, method=self.method,
                           calibration=dict(self.calibration))


@dataclass
class NoveltyFit(_Thresholded):
    """A fitted head, its threshold and the figures for the card."""

    head: nn.Module  # SubspaceNovelty or NearestNeighbourNovelty
    threshold: float
    method: str
    calibration: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def scores(self, features: np.ndarray, batch: int = 16384) -> np.ndarray:
        return np.concatenate([self.head(torch.from_numpy(np.ascontiguousarray(features[i:i + batch],
                                                                              np.float32))).numpy()
                               for i in range(0, len(features), batch)]) if len(features) else np.zeros(0)



def novelty_output(description: str = "") -> OutputSpec:
    """The card's output entry of a novelty head."""
    return OutputSpec(name=OUTPUT_NAME, role="novelty", labels=["novelty"],
                      description=description or "distance from the training data's principal subspace, per "
                                                 "feature, in units of the training residual")


def _threshold_figures(held: np.ndarray, *, score: str, quantile: float,
                       **figures: float) -> tuple[float, str, dict[str, float]]:
    """The threshold at ``quantile`` of the held-out scores ``held``, the card's method text (``score`` says
    how a sample is scored) and its figures (``figures``, e.g. the number of components, then the held-out
    counts)."""
    threshold = float(np.quantile(held, quantile))
    method = f"{score}; threshold at the {quantile:g} quantile of held-out training-like samples"
    calibration = {"quantile": quantile, **{k: float(v) for k, v in figures.items()},
                   "n_heldout": float(len(held)), "heldout_flagged": float(np.mean(held > threshold))}
    return threshold, method, calibration


def _subspace_figures(held: np.ndarray, *, components: int, n_fit: int, features: str, quantile: float,
                      counts_floor: float | None) -> tuple[float, str, dict[str, float]]:
    """:func:`_threshold_figures` of a subspace score (with its counts floor, if any)."""
    score = (f"squared distance of {features} from the {components}-dimensional principal subspace of "
             f"the training data, per feature in units of the training residual")
    floor: dict[str, float] = {}
    if counts_floor is not None:
        score += (f", plus {COUNTS_FLOOR_WEIGHT:g} x max(0, ln({counts_floor:g} / mean counts per channel)) "
                  "for spectra dimmer than the counts floor")
        floor["counts_floor"] = counts_floor
    return _threshold_figures(held, score=score, quantile=quantile, components=components, n_fit=n_fit, **floor)


def fit_novelty(fit: np.ndarray, held_out: np.ndarray, *, components: int, features: str,
                quantile: float = QUANTILE, max_fit: int = 50_000, seed: int = 0,
                counts_floor: float | None = None) -> NoveltyFit:
    """Fit the subspace on (at most ``max_fit`` of) the training features ``fit`` ``[n, d]``
    (:func:`fit_subspace`), the threshold on the held-out features ``held_out`` scored by the torch head;
    ``features`` says what they are (for the card's method); ``counts_floor`` as :class:`SubspaceNovelty`'s."""
    sub = fit_subspace(fit, components=components, max_fit=max_fit, seed=seed)
    head = SubspaceNovelty(sub.mean, sub.basis, sub.residual_var, counts_floor).eval()
    result = NoveltyFit(head, 0.0, "")
    held = result.scores(np.asarray(held_out, np.float32))
    result.threshold, result.method, result.calibration = _subspace_figures(
        held, components=components, n_fit=sub.n_fit, features=features, quantile=quantile,
        counts_floor=counts_floor)
    return result


def fit_nearest_novelty(fit: np.ndarray, held_out: np.ndarray, *, bank: int, k: int, features: str,
                        quantile: float = QUANTILE, seed: int = 0) -> NoveltyFit:
    """The nearest-neighbour head (:class:`NearestNeighbourNovelty`) on a bank of ``bank`` rows of the
    training features ``fit`` ``[n, d]`` (drawn with ``seed``), its threshold at ``quantile`` of the scores of
    the held-out features ``held_out``; ``features`` says what they are (for the card's method)."""
    rng = np.random.default_rng(seed)
    fit = np.asarray(fit, np.float32)
    rows = fit[rng.choice(len(fit), bank, replace=False)] if len(fit) > bank else fit
    result = NoveltyFit(NearestNeighbourNovelty(rows, min(k, len(rows))).eval(), 0.0, "")
    held = result.scores(np.asarray(held_out, np.float32), batch=2048)
    result.threshold, result.method, result.calibration = _threshold_figures(
        held, score=f"root-mean-square distance per feature of {features} from the {k} nearest of {len(rows)} "
                    "training samples", quantile=quantile, neighbours=k, n_fit=len(rows))
    return result


@dataclass
class SubspaceFit(_Thresholded):
    """A fitted novelty score without a torch module (:func:`fit_subspace_novelty`): its constants, threshold
    and the figures for the card, as :class:`NoveltyFit` has them."""

    subspace: Subspace
    threshold: float
    method: str
    calibration: dict[str, float] = field(default_factory=dict)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.subspace.scores(features)


def fit_subspace_novelty(fit: np.ndarray, held_out: np.ndarray, *, components: int, features: str,
                         quantile: float = QUANTILE, max_fit: int = 50_000, seed: int = 0,
                         counts_floor: float | None = None) -> SubspaceFit:
    """:func:`fit_novelty` in numpy alone: the subspace (:func:`fit_subspace`) on the training features ``fit``,
    the threshold at ``quantile`` of the float64 scores of the held-out features ``held_out``."""
    sub = fit_subspace(fit, components=components, max_fit=max_fit, seed=seed, counts_floor=counts_floor)
    held = sub.scores(held_out)
    threshold, method, calibration = _subspace_figures(held, components=components, n_fit=sub.n_fit,
                                                       features=features, quantile=quantile,
                                                       counts_floor=counts_floor)
    return SubspaceFit(sub, threshold, method, calibration)


class WithNovelty(nn.Module):
    """A recognizer network plus its novelty head: the network's outputs, then the novelty score. The
    network provides ``novelty_features(x)`` (``[n, d]``) from its raw input."""

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return (*out, self.head(self.net.novelty_features(x)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T) on these held-out
    samples (a bounded 1-d search over log T, which is convex). ``labels``: class indices ``[n]``, or target
    distributions ``[n, classes]`` (soft labels, e.g. an atom column's profile)."""
    lg = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long if np.asarray(labels).ndim == 1 else torch.float64)

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(lg / np.exp(log_t), y))

    lo, hi = np.log(0.05), np.log(20.0)
    for _ in range(60):  # golden-section search
        a, b = hi - (hi - lo) / 1.618, lo + (hi - lo) / 1.618
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp(0.5 * (lo + hi)))
