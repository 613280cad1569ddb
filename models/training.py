"""Shared plumbing of the supervised training runs (eels-mlp, bepfm-mlp, loops-mlp; the result record and the
run's frame also stem-unet and one-frame-unet, whose step loop is ``stem_unet.train_network``; ``train`` stem-unet).

Each model keeps its own network, data, loss and metrics in its module; what is the same everywhere lives
here: the result record (segmentation models extend it with their post-processing:
``stem_unet.SegmentationResult``), the run's frame (torch threads, seed, stopwatch), the epoch loop (AdamW with a
one-cycle learning rate over a seeded permutation, one ``train`` progress event per epoch), the optimizer's
entries in the model card, the held-out inputs kept for the ONNX parity check, and the
``train(out_path, ...)`` entry point that ``scanlens train`` calls. The committed models' cards record
these recipes: changing anything here (the order of random draws included) changes what retraining produces.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from scanlens.models.export import ProgressFn, TrainProgress, emit
from scanlens.models.novelty import NoveltyFit

_WEIGHT_DECAY_TEXT = "1e-4"  # as the cards write it
WEIGHT_DECAY = float(_WEIGHT_DECAY_TEXT)
PCT_START = 0.15  # share of the steps in which the one-cycle learning rate rises

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass
class TrainResult(Generic[ModelT]):
    """A trained network with its held-out metrics, training record and the inputs used for the parity check."""

    model: ModelT
    metrics: dict[str, float]
    training: dict[str, Any]
    check_inputs: np.ndarray
    novelty: NoveltyFit | None = field(default=None, kw_only=True)  # the novelty head and its threshold (models/novelty.py)


class EpochRecipe(Protocol):
    """What :func:`train_epochs` reads from a model's ``Recipe``."""

    @property
    def epochs(self) -> int: ...

    @property
    def batch(self) -> int: ...

    @property
    def lr(self) -> float: ...


#: The loss of one batch: (indices of the batch's samples, the shuffling generator, for augmentation drawn
#: from the same stream) -> scalar loss tensor.
BatchLoss = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Stopwatch:
    """Seconds per stage of a run: ``lap(name)`` ends the stage that began at the previous lap (or the start)."""

    start: float = field(default_factory=time.perf_counter)
    laps: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str) -> float:
        seconds = time.perf_counter() - self.start - sum(self.laps.values())
        self.laps[name] = seconds
        return seconds

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.laps.items())


@contextlib.contextmanager
def seeded_run(seed: int, threads: int = 2) -> Iterator[Stopwatch]:
    """A training run's frame: a started :class:`Stopwatch`, ``threads`` torch threads (the previous setting is
    restored on the way out) and torch's global generator, which initialises the weights, seeded with ``seed``."""
    clock = Stopwatch()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        yield clock
    finally:
        torch.set_num_threads(old)


def silu_mlp(n_in: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    """The body of the MLP recognizers, ``Linear -> SiLU`` per width in ``hidden``, and its output width."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    return nn.Sequential(*layers), width


def train_epochs(model: nn.Module, n_samples: int, batch_loss: BatchLoss, recipe: EpochRecipe, *, seed: int,
                 progress: ProgressFn | None = None) -> float:
    """Train ``model`` for ``recipe.epochs`` epochs over ``n_samples`` samples, in batches of ``recipe.batch``.

    AdamW (weight decay :data:`WEIGHT_DECAY`) with a one-cycle learning rate peaking at ``recipe.lr``; every
    epoch visits the samples in a permutation drawn from a ``torch.Generator`` seeded with ``seed``. Emits a
    ``train`` event per epoch and returns the mean loss of the last epoch; the model is left in eval mode.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(n_samples / recipe.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=PCT_START
    )
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(n_samples, generator=gen)
        running, seen = 0.0, 0
        for start in range(0, n_samples, recipe.batch):
            idx = order[start : start + recipe.batch]
            loss = batch_loss(idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach().item() * len(idx)
            seen += len(idx)
        loss_value = running / seen
        emit(progress, TrainProgress("train", epoch + 1, recipe.epochs, loss=loss_value))
    model.eval()
    return loss_value


def optimizer_record(recipe: EpochRecipe) -> dict[str, Any]:
    """The card's ``epochs``, ``batch`` and ``optimizer`` entries for a run of :func:`train_epochs`."""
    return {
        "epochs": recipe.epochs,
        "batch": recipe.batch,
        "optimizer": f"AdamW lr {recipe.lr} one-cycle, weight_decay {_WEIGHT_DECAY_TEXT}",
    }


def parity_inputs(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` (at most all) of the held-out inputs ``x``, drawn without replacement for ``seed``, in their order:
    what the export checks ONNX Runtime against torch on."""
    pick = np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False)
    return x[np.sort(pick)]


def trainer(name: str, fit: Callable[..., Any],
            export: Callable[[Any, str | PathLike[str], ProgressFn | None], float]) -> Callable[..., dict[str, float]]:
    """The module's ``train(out_path, *, quick, seed, progress)``: ``fit``, then ``export`` to ``out_path``;
    returns the held-out metrics and ``onnx_max_abs_diff``. ``scanlens train`` calls it."""

    def train(
        out_path: str | PathLike[str],
        *,
        quick: bool = False,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> dict[str, float]:
        result = fit(quick=quick, seed=seed, progress=progress)
        diff = export(result, out_path, progress)
        return {**result.metrics, "onnx_max_abs_diff": diff}

    train.__doc__ = f"Train {name}, export it with its card to ``out_path`` and return the held-out metrics."
    train.__module__, train.__qualname__ = fit.__module__, "train"
    return train
