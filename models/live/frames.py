"""Live training of a frame recognizer: the frame U-Net fine-tuned on ONE labelled frame of the running scan.

The trainer (``kind == "frame"``, docs/live-training.md) calls :func:`train_frame` with a frame as the
instrument sent it and the operator's labels; it has seconds, not minutes (the service answers within 30 s
from the request to the first frame recognized by the new model). The result is a network of exactly the
shipped ``stem-unet``'s kind, so the service's ``FrameRecognizer`` serves it unchanged: raw input
``[n, 1, h, w]`` (counts or fractions of the beam: the graph's scale-free normalisation makes them alike),
softmax over :data:`~scanlens.sim.stem.SEG_CLASSES`, the post-processing parameters in the card, and a
frame novelty output that says when later frames are unlike the labelled one.

**Reused.** :mod:`scanlens.models.one_frame` measures the lattice in the labels (column centres, the
nearest-neighbour spacing ``nn``, the card's post-processing and the soft targets' width scaled to it,
edge slivers dropped: :func:`~scanlens.models.one_frame.prepare_frame`) and draws the training crops
(all offsets, the 8 dihedral orientations, binomial thinning of counts, a gain, the service's padding,
half the crops on a defect; defect classes weigh 30); :mod:`scanlens.models.stem_unet` gives the network,
the loss against soft centre-peaked targets, the novelty head's place in the graph and the ONNX export.

**Fine-tuning, not training from scratch.** By default the network starts from the shipped stem-unet's
weights (``base``: any ONNX file stem-unet's export wrote, e.g. an earlier live model), read from the
file's initializers (:func:`load_base`). The export folded each batch norm into its convolution, so the
file holds the folded weights: they are loaded as the convolution, the batch norm becomes a per-channel
affine map (statistics 0 and 1) and stays in eval mode while training, and the temperature is folded into
the head; ONNX Runtime must then reproduce the loaded network on a crop of the frame, or the run falls back
to training from scratch (the reason is logged and written to the card). Measured on graphene movies
(``STEMConfig(lattice="graphene", size=256, n_defects=4)``, seeds 3, 7, 11; 2 shared CPU cores), atom F1
on the ten frames after the labelled one, scored as the service runs the model: fine-tuned, 6 steps give
0.984-0.994 mean (4 steps: 0.85-0.99), 8 steps >= 0.992 mean and >= 0.990 min, 10-45 steps 0.994-0.999
mean, >= 0.991 min; from scratch 30 steps give 0.985-0.987, 60 give 0.988-0.994, 90 give 0.993-0.998.
A fine-tuning step takes ~0.13-0.17 s on two threads, ~0.23-0.28 s on one (the same F1 for the same
steps); from scratch ~0.2 s (batch norm in train mode). Two threads are 5-10 x slower than that when
another process keeps a core busy (OpenMP waits for the descheduled thread): the trainer beside the
service may be better off with one. The shipped stem-unet itself finds F1 <= 0.13 of graphene's atoms.

**Budget.** Training ends when :data:`TRAIN_SHARE_OF_BUDGET` of ``budget_s`` is spent, or earlier so that
the export (:data:`EXPORT_S`, 4.6-7.5 s), the novelty head and the training-frame scores
(:func:`post_steps`: their pixels in training steps' time) still fit. The steps are planned after
:data:`PLAN_AT` steps from the median step time and replanned every few steps (at most :data:`MAX_STEPS`);
the learning rate warms up over a few steps, then follows a cosine over the planned steps; a step that
would pass the deadline is not taken (the card says "budget"). A budget that leaves fewer than
:data:`MIN_STEPS` steps is refused with a ValueError that says what budget would do. In a 20 s budget a 256 x 256 frame gets ~35-60 fine-tuning
steps (far more than it needs) and the job ends after ~17-21 s (measured, load average 2-3 on 2 cores);
what it needs is ~8 s on an idle machine and ~13 s on a busy one (10 steps, 1.5-3 s, and 6-10 s of novelty,
scores and export), but the plan keeps the margins above, so the least budget it accepts is ~14 s (idle)
to ~17 s (busy). The number of steps depends on the machine's pace, so a run is deterministic for a seed
and thread count only when that is the same.

**Labels.** ``labels`` uint8 ``[h, w]``: 0 = unlabelled (no loss there), k = ``classes[k-1]``, names of
SEG_CLASSES. Atom columns and vacancy sites are blobs (disks, as the simulator paints them) that do not
touch others of their class. Where less than :data:`ANCHORED_BELOW` of the frame is labelled, the crops
are placed to contain a labelled pixel. A part of the labels is held out for ``val_accuracy``: about
:data:`VALIDATION_SHARE` of the 32 x 32 tiles that are mostly labelled and hold no defect (defects are
rare: they all train), when at least :data:`MIN_VALIDATION_PIXELS` pixels are labelled. The accuracy is
that of the class per pixel against the hard version of the training target (an atom class where its soft
target is above one half, i.e. within ~1.2 sigma of a column's centre: the network is trained to call a
column's rim background), on 64 x 64 windows around those tiles.

**Novelty.** ``models/novelty.py``'s subspace head on stem-unet's frame features (the deepest U-Net
block's channel means and standard deviations), fitted on :data:`NOVELTY_FIT_CROPS` augmented crops of the
labelled frame (:data:`NOVELTY_SIZES` sizes from the training crop to 256 px) and two augmented views of all
of it, thresholded on as many others (fresh positions, orientations and noise); a floor under the residual
variances keeps the score's float32 rounding small. Measured (256 and 512 px graphene frames): the
following frames of the scan score 0.05-0.3 x the threshold, WS2 frames 5-300 x, blank (Poisson) and
contrast-inverted frames 5-10^5 x; graphene of another scan (another lattice rotation or dose) 0.2-15 x,
so about half of those are flagged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from threadpoolctl import threadpool_limits
from torch import nn

from scanlens.model_files import MODEL_DIR
from scanlens.models.export import make_session
from scanlens.models.novelty import QUANTILE, NoveltyFit, SubspaceNovelty
from scanlens.models.one_frame import (
    CLASS_WEIGHTS,
    DEFECT_CROP_SHARE,
    GAIN_RANGE,
    LEARNING_RATE,
    MAX_CROP_PX,
    THINNED_SHARE,
    THINNING_RANGE,
    OneFrameResult,
    PreparedFrame,
    TrainingFrame,
    check_name,
    digest,
    model_card,
    positive_number,
    prepare_frame,
    sample_batch,
    sample_crop,
    training_frame_scores,
    validate_frame,
)
from scanlens.models.stem_unet import (
    IGNORE,
    PADDED_SHARE,
    SEG_OF_ATOM,
    SEG_OF_DEFECT,
    STEMUNet,
    export_model,
    loss_fn,
)
from scanlens.models.stem_unet import NAME as STEM_UNET
from scanlens.models.stem_unet.network import NOVELTY_FEATURES, WithFrameNovelty
from scanlens.models.subspace import fit_subspace
from scanlens.models.training import WEIGHT_DECAY, seeded_run
from scanlens.pipeline import length_factor
from scanlens.sim.stem import SEG_CLASSES

log = logging.getLogger(__name__)

VERSION = "1"
#: The base when the request names none: the shipped frame model.
DEFAULT_BASE = MODEL_DIR / f"{STEM_UNET}.onnx"
#: Peak learning rates: fine-tuning a base, training from scratch (one-frame-unet's).
FINE_TUNE_LR = 2e-3
SCRATCH_LR = LEARNING_RATE
#: Linear warm-up steps, then a cosine down to FINAL_LR_SHARE of the peak over the planned steps.
WARMUP_STEPS = {"fine-tune": 3, "scratch": 6}
FINAL_LR_SHARE = 0.02
#: Fewest steps a run may plan (fewer do not find the atoms: see the module docstring) and most it takes.
MIN_STEPS = {"fine-tune": 10, "scratch": 30}
MAX_STEPS = 150
#: Training stops when this share of the budget is spent ...
TRAIN_SHARE_OF_BUDGET = 0.7
#: ... or earlier, so that the export (EXPORT_S: measured ~4.6 s on an idle 2-core machine, 5.7-7.5 s on a busy
#: one), the novelty fit and the training-frame scores fit: :func:`post_steps` training steps' time, from the
#: pixels they run through the network (a training step runs ~POST_PIXELS_PER_STEP x its batch's pixels' worth:
#: measured, 40 novelty crops of a 256 px frame took ~8 steps' time) plus POST_MARGIN_STEPS.
EXPORT_S = 7.0
POST_PIXELS_PER_STEP = 2.0
POST_MARGIN_STEPS = 2.0
#: The steps are planned after PLAN_AT steps (and replanned at every report) from the median time of the
#: last few, times STEP_TIME_MARGIN.
PLAN_AT = 4
STEP_TIME_MARGIN = 1.1
#: A progress message every this many steps (and after the last).
REPORT_EVERY = 5
#: Validation: tiles of this edge, about this share of the eligible ones (at most MAX_VALIDATION_TILES), only
#: when at least MIN_VALIDATION_PIXELS pixels are labelled; scored on windows of VALIDATION_WINDOW px.
VALIDATION_TILE = 32
VALIDATION_SHARE = 0.1
MAX_VALIDATION_TILES = 16
MIN_VALIDATION_PIXELS = 8192
VALIDATION_WINDOW = 64
#: Crops contain a labelled pixel when less than this share of the frame is labelled.
ANCHORED_BELOW = 0.9
#: The novelty head: augmented crops of the frame to fit it on and to threshold it on (NOVELTY_SIZES edges
#: up to NOVELTY_MAX_PX), its components and the floor under its residual variances (x their mean).
NOVELTY_FIT_CROPS = 20
NOVELTY_HELDOUT_CROPS = 20
#: ... and augmented views of the whole frame (fit, threshold): the features drift with a frame's size (the
#: zero padding reaches ~9 cells in), so crops alone leave the frame itself outside (measured, 512 px frame,
#: crops up to 256 px: the following frames at 0.8-1.3 x the threshold; with two views 0.24 x)
NOVELTY_WHOLE_VIEWS = (2, 1)
NOVELTY_SIZES = 5
NOVELTY_MAX_PX = 256
NOVELTY_COMPONENTS = 4
NOVELTY_VARIANCE_FLOOR = 1e-3


# --------------------------------------------------------------------------- the base network


class BaseMismatch(ValueError):
    """The base ONNX file is not a network :func:`load_base` can read into a :class:`STEMUNet`."""


def _conv_names(net: STEMUNet) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(name in the state dict, convolution, its batch norm) of every conv + batch norm pair."""
    out = []
    for group, blocks in (("enc", net.enc), ("dec", net.dec)):
        for i, block in enumerate(blocks):
            for c in (0, 3):
                out.append((f"{group}.{i}.{c}", block[c], block[c + 1]))
    return out


def load_base(path: str | PathLike[str], check_image: np.ndarray | None = None) -> STEMUNet:
    """A :class:`STEMUNet` holding the weights of the ONNX file at ``path`` (written by stem-unet's export:
    each batch norm folded into its convolution, as ``<conv>.weight`` and ``<conv>.weight_bias``; names with
    the ``net.`` prefix of the novelty wrapper or without). The folded batch norms load as per-channel affine
    maps (statistics 0 and 1), the temperature is folded into the head. With ``check_image`` (float32 ``[h,
    w]``, multiples of 16) ONNX Runtime must give the same probabilities as the loaded network.
    BaseMismatch says why a file does not fit."""
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # a missing or unreadable file, not ONNX
        raise BaseMismatch(f"cannot read {path}: {exc}") from None
    init = {i.name: i for i in proto.graph.initializer}
    net = STEMUNet()
    prefix = "net." if "net.head.weight" in init else ""
    wanted: dict[str, tuple[int, ...]] = {}
    for name, conv, _ in _conv_names(net):
        wanted[f"{name}.weight"] = tuple(conv.weight.shape)
        wanted[f"{name}.weight_bias"] = (conv.out_channels,)
    for i, up in enumerate(net.up):
        wanted[f"up.{i}.weight"], wanted[f"up.{i}.bias"] = tuple(up.weight.shape), tuple(up.bias.shape)
    wanted["head.weight"], wanted["head.bias"] = tuple(net.head.weight.shape), tuple(net.head.bias.shape)
    missing = [n for n in wanted if prefix + n not in init]
    if missing:
        raise BaseMismatch(f"{path} is not a STEMUNet export: no initializer {prefix + missing[0]!r}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    arrays = {n: numpy_helper.to_array(init[prefix + n]).astype(np.float32) for n in wanted}
    wrong = [f"{n} {a.shape} (STEMUNet: {wanted[n]})" for n, a in arrays.items() if a.shape != wanted[n]]
    if wrong:
        raise BaseMismatch(f"{path}: initializer shapes differ from STEMUNet's: {', '.join(wrong[:3])}")
    t_name = prefix + "temperature"
    temperature = float(numpy_helper.to_array(init[t_name])) if t_name in init else 1.0
    if not (math.isfinite(temperature) and temperature > 0):
        raise BaseMismatch(f"{path}: temperature {temperature} is not a finite number > 0")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        for name, conv, bn in _conv_names(net):
            conv.weight.copy_(t(arrays[f"{name}.weight"]))
            bn.weight.fill_(1.0)
            bn.bias.copy_(t(arrays[f"{name}.weight_bias"]))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) = x
        for i, up in enumerate(net.up):
            up.weight.copy_(t(arrays[f"up.{i}.weight"]))
            up.bias.copy_(t(arrays[f"up.{i}.bias"]))
        net.head.weight.copy_(t(arrays["head.weight"] / temperature))
        net.head.bias.copy_(t(arrays["head.bias"] / temperature))
    net.eval()
    if check_image is not None:
        x = np.ascontiguousarray(check_image, np.float32)[None, None]
        try:
            session = make_session(str(path), threads=torch.get_num_threads())
            names = [o.name for o in session.get_outputs()]
            got = session.run(names[:1], {session.get_inputs()[0].name: x})[0]
        except Exception as exc:
            raise BaseMismatch(f"ONNX Runtime cannot run {path} on the frame: {exc}") from None
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else math.inf
        if not diff < 1e-3:
            raise BaseMismatch(f"{path}: the network read from its initializers differs from the file's own "
                               f"output by {diff:.3g} (its graph is not stem-unet's)")
    return net


# --------------------------------------------------------------------------- inputs


def _pixel_size_nm(pixel_size: Any) -> float:
    if not isinstance(pixel_size, dict) or "size" not in pixel_size:
        raise ValueError(f"pixel_size must be {{'size': float, 'units': 'nm'}}, got {pixel_size!r}")
    size, units = pixel_size["size"], pixel_size.get("units", "nm")
    value = positive_number(size, "pixel_size['size']")
    try:
        return value * length_factor(str(units), "nm")
    except ValueError:
        raise ValueError(f"pixel_size['units'] must be a length (pm, Å, nm, um), got {units!r}") from None


def _validate(image: np.ndarray, labels: np.ndarray, classes: Any, pixel_size: Any, name: str, modality: Any,
              budget_s: Any) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """(image float32, labels as SEG_CLASSES indices with IGNORE where unlabelled, classes, pixel size nm)."""
    check_name(name)
    if not isinstance(modality, str) or not modality:
        raise ValueError(f"modality must be a non-empty string, got {modality!r}")
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"classes must be a non-empty list of names from {', '.join(SEG_CLASSES)}; got {classes!r}")
    unknown = [c for c in classes if c not in SEG_CLASSES]
    if unknown:
        raise ValueError(f"unknown class names {unknown}: a frame model segments the STEM classes "
                         f"{', '.join(SEG_CLASSES)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat a name, got {list(classes)}")
    try:
        budget = float(budget_s)
    except (TypeError, ValueError):
        budget = math.nan
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget_s must be a finite number of seconds > 0, got {budget_s!r}")
    px_nm = _pixel_size_nm(pixel_size)
    img, lab = validate_frame(image, labels, len(classes),
                              f"0 (unlabelled) or 1..{len(classes)} (classes[k - 1]: {', '.join(classes)})")
    lut = np.array([IGNORE] + [SEG_CLASSES.index(c) for c in classes], np.uint8)
    seg = lut[lab]
    present = sorted({int(v) for v in np.unique(lab)} - {0})
    if not present:
        raise ValueError("no pixel is labelled (all labels are 0): label the atoms and the background of a region")
    if len(present) == 1:
        raise ValueError(f"the labels hold one class only ({classes[present[0] - 1]}): label at least two, e.g. "
                         "the background and the atom columns")
    return img, seg, list(classes), px_nm


# --------------------------------------------------------------------------- validation part


@dataclass
class Validation:
    """Held-out tiles of the labelled pixels: windows around them and the expected class of their pixels."""

    windows: torch.Tensor  # float32 [n, 1, s, s]
    target: np.ndarray  # int64 [n, s, s]: expected SEG_CLASSES index on held-out labelled pixels, -1 elsewhere
    pixels: int

    @torch.no_grad()
    def accuracy(self, model: STEMUNet) -> float:
        pred = model.logits(self.windows).argmax(dim=1).numpy()
        scored = self.target >= 0
        return float(np.mean(pred[scored] == self.target[scored]))


def split_validation(frame: TrainingFrame, sigma_px: float, seed: int) -> tuple[np.ndarray, Validation | None]:
    """(training labels, the validation part or None): see the module docstring."""
    lab = frame.labels
    h, w = lab.shape
    labelled = lab != IGNORE
    if int(labelled.sum()) < MIN_VALIDATION_PIXELS:
        return lab, None
    t = VALIDATION_TILE
    ny, nx = h // t, w // t
    tiles = lambda a: a[: ny * t, : nx * t].reshape(ny, t, nx, t).swapaxes(1, 2)  # noqa: E731
    share = tiles(labelled).mean(axis=(2, 3))
    defect = tiles(np.isin(lab, SEG_OF_DEFECT)).any(axis=(2, 3))
    eligible = np.argwhere((share >= 0.5) & ~defect)
    if len(eligible) < 5:
        return lab, None
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(41,)))
    n = min(MAX_VALIDATION_TILES, max(1, round(VALIDATION_SHARE * int((share > 0).sum()))), len(eligible))
    chosen = eligible[np.sort(rng.choice(len(eligible), n, replace=False))]
    atom = np.isin(lab, SEG_OF_ATOM)
    expected = np.where(atom & (np.exp(-np.minimum(frame.distance, 1e3) ** 2 / (2 * sigma_px**2)) <= 0.5), 0,
                        lab).astype(np.int64)
    s = VALIDATION_WINDOW
    train = lab.copy()
    windows, targets = [], []
    for ty, tx in chosen:
        y, x = ty * t, tx * t
        held = np.zeros_like(labelled)
        held[y : y + t, x : x + t] = True
        held &= labelled
        train[held] = IGNORE
        y0, x0 = int(np.clip(y - (s - t) // 2, 0, h - s)), int(np.clip(x - (s - t) // 2, 0, w - s))
        windows.append(frame.image[y0 : y0 + s, x0 : x0 + s])
        targets.append(np.where(held, expected, -1)[y0 : y0 + s, x0 : x0 + s])
    target = np.stack(targets)
    val = Validation(torch.from_numpy(np.ascontiguousarray(np.stack(windows)[:, None], np.float32)), target,
                     int((target >= 0).sum()))
    return train, val


# --------------------------------------------------------------------------- training


def _set_training(model: STEMUNet, frozen_norm: bool) -> None:
    """Train mode; with ``frozen_norm`` the batch norms stay in eval mode (affine maps of fixed statistics)."""
    model.train()
    if frozen_norm:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def _lr_factor(step: int, planned: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, planned - warmup)
    return FINAL_LR_SHARE + (1.0 - FINAL_LR_SHARE) * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


@dataclass
class _Run:
    steps: int
    planned: int
    stopped: str
    loss: float
    val_accuracy: float | None
    seconds: float


def _train(model: STEMUNet, frame: TrainingFrame, prepared: PreparedFrame, val: Validation | None, *, mode: str,
           seed: int, start: float, budget_s: float, after_steps: float,
           progress: Callable[[dict], None] | None) -> _Run:
    """Fine-tune (``mode`` "fine-tune": batch norms frozen) or train (``"scratch"``) ``model`` on crops of the
    frame until the planned steps are done or the deadline is reached (see the module docstring)."""
    t0 = time.perf_counter()
    share_end, end = start + TRAIN_SHARE_OF_BUDGET * budget_s, start + budget_s
    deadline = min(share_end, end - EXPORT_S)
    frozen = mode == "fine-tune"
    lr = FINE_TUNE_LR if frozen else SCRATCH_LR
    warmup = WARMUP_STEPS[mode]
    weights = torch.tensor(list(CLASS_WEIGHTS), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(31,)))
    planned, stopped = MAX_STEPS, "planned steps"
    running, count, loss_value, val_acc = 0.0, 0, math.nan, None
    step_times: list[float] = []
    val_s = 0.0
    _set_training(model, frozen)
    step = 0
    while step < planned:
        t_step = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, planned, warmup)
        x, y, d = sample_batch(frame, rng, prepared.batch)
        loss = loss_fn(model.logits(torch.from_numpy(x)), torch.from_numpy(y), torch.from_numpy(d), weights,
                       prepared.sigma_px)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        count += 1
        step += 1
        if step > 1:  # the first step pays for allocations
            step_times.append(time.perf_counter() - t_step)
        if step == PLAN_AT and val is not None:
            model.eval()
            t_val = time.perf_counter()
            val.accuracy(model)
            val_s = time.perf_counter() - t_val
            _set_training(model, frozen)
        if step == PLAN_AT or (step > PLAN_AT and step % REPORT_EVERY == 0):
            # (re)plan from the median of the recent steps: one slow step (a busy machine) does not decide
            per_step = float(np.median(step_times[-REPORT_EVERY:])) * STEP_TIME_MARGIN + val_s / REPORT_EVERY
            now = time.perf_counter()
            deadline = min(share_end, end - EXPORT_S - after_steps * per_step)
            planned = max(step, min(MAX_STEPS, step + int((deadline - now) / per_step)))
            if step == PLAN_AT:
                if planned < MIN_STEPS[mode]:
                    left = (MIN_STEPS[mode] - step) * per_step
                    need = max((now - start + left) / TRAIN_SHARE_OF_BUDGET,
                               now - start + left + EXPORT_S + after_steps * per_step)
                    raise ValueError(
                        f"budget_s={budget_s:g} leaves time for {planned} training steps at {per_step:.2f} s a step "
                        f"on this machine now; {mode} needs at least {MIN_STEPS[mode]}: give budget_s >= "
                        f"{math.ceil(need)}")
                log.info("live frame training: %s, %d steps planned at %.3f s a step", mode, planned, per_step)
        last = step >= planned
        if not last and step_times and time.perf_counter() + step_times[-1] > deadline:
            stopped, last = "budget", True
        if step % REPORT_EVERY == 0 or last:
            loss_value = running / max(count, 1) if count else loss_value
            running, count = 0.0, 0
            if val is not None:
                model.eval()
                val_acc = val.accuracy(model)
                _set_training(model, frozen)
            if progress is not None:
                progress({"epoch": step, "epochs": planned, "loss": loss_value, "val_accuracy": val_acc})
        if last:
            break
    model.eval()
    return _Run(steps=step, planned=planned, stopped=stopped, loss=float(loss_value), val_accuracy=val_acc,
                seconds=time.perf_counter() - t0)


@torch.no_grad()
def _features(model: STEMUNet, images: list[np.ndarray], batch: int = 8) -> np.ndarray:
    """Novelty features ``[n, d]`` of the images, those of one size a batch at a time."""
    out = np.zeros((len(images), 2 * model.head.in_channels * 2 ** model.levels), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for rows in by_shape.values():
        for k in range(0, len(rows), batch):
            idx = rows[k : k + batch]
            x = torch.from_numpy(np.ascontiguousarray(np.stack([images[i] for i in idx])[:, None], np.float32))
            out[idx] = model.logits_and_features(x)[1].numpy()
    return out


def novelty_crop_sizes(frame: TrainingFrame) -> list[int]:
    """Edges of the novelty crops: :data:`NOVELTY_SIZES` multiples of 16 from the training crop up to the
    frame's short side (at most :data:`NOVELTY_MAX_PX`). Crops of one size only do not do: a whole frame's
    features then differ from every crop's (measured: later frames of the scan 40-65 x the threshold)."""
    top = max(frame.crop, min(NOVELTY_MAX_PX, min(frame.image.shape) // 16 * 16))
    return sorted({int(round(v / 16)) * 16 for v in np.linspace(frame.crop, top, NOVELTY_SIZES)})


def post_steps(frame: TrainingFrame, batch: int) -> float:
    """The time the novelty fit and the training-frame scores take, in training steps (see :data:`EXPORT_S`)."""
    sizes = novelty_crop_sizes(frame)
    crops = [sizes[k % len(sizes)] ** 2 for k in range(NOVELTY_FIT_CROPS)]
    crops += [sizes[k % len(sizes)] ** 2 for k in range(NOVELTY_HELDOUT_CROPS)]
    pixels = sum(crops) + (sum(NOVELTY_WHOLE_VIEWS) + 1) * _whole(frame).crop ** 2 + frame.image.size
    return POST_MARGIN_STEPS + pixels / (POST_PIXELS_PER_STEP * batch * frame.crop**2)


def _whole(frame: TrainingFrame) -> TrainingFrame:
    """The frame as one crop of its short side (a multiple of 16): augmented views of all of it."""
    return dataclasses.replace(frame, crop=min(frame.image.shape) // 16 * 16)


def fit_frame_novelty(model: STEMUNet, frame: TrainingFrame, seed: int) -> NoveltyFit:
    """The frame novelty head (see the module docstring): the subspace of the features of augmented crops of
    the labelled frame, sizes :func:`novelty_crop_sizes` in turn, and of :data:`NOVELTY_WHOLE_VIEWS` views of
    all of it; the threshold on as many others."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(37,)))
    sizes = novelty_crop_sizes(frame)
    views = {s: dataclasses.replace(frame, crop=s) for s in sizes}
    whole = _whole(frame)
    n_fit, n_held = NOVELTY_FIT_CROPS + NOVELTY_WHOLE_VIEWS[0], NOVELTY_HELDOUT_CROPS + NOVELTY_WHOLE_VIEWS[1]
    crops = [sample_crop(views[sizes[k % len(sizes)]], rng)[0] for k in range(NOVELTY_FIT_CROPS)]
    crops += [sample_crop(whole, rng)[0] for _ in range(NOVELTY_WHOLE_VIEWS[0])]
    crops += [sample_crop(views[sizes[k % len(sizes)]], rng)[0] for k in range(NOVELTY_HELDOUT_CROPS)]
    crops += [sample_crop(whole, rng)[0] for _ in range(NOVELTY_WHOLE_VIEWS[1])]
    features = _features(model, crops)
    fit, held = features[:n_fit], features[n_fit:]
    sub = fit_subspace(fit, components=NOVELTY_COMPONENTS, seed=seed)
    # a floor under the residual variances: most deep channels of a base fine-tuned on another material are
    # dead on this one (variance ~1e-11 in a few dozen crops), and their weight would turn float32 rounding
    # into score (the ONNX parity check failed); measured: the floor changes no flagging of later frames,
    # other materials or blank frames
    residual_var = np.maximum(sub.residual_var, NOVELTY_VARIANCE_FLOOR * float(np.mean(sub.residual_var)))
    result = NoveltyFit(SubspaceNovelty(sub.mean, sub.basis, residual_var).eval(), 0.0, "")
    held_scores = result.scores(held)
    result.threshold = float(np.quantile(held_scores, QUANTILE))
    result.method = (f"squared distance of {NOVELTY_FEATURES} from the {NOVELTY_COMPONENTS}-dimensional principal "
                     f"subspace of those of {NOVELTY_FIT_CROPS} augmented crops ({', '.join(map(str, sizes))} px) and "
                     f"{NOVELTY_WHOLE_VIEWS[0]} augmented views of the labelled frame, per feature in units of their "
                     f"residual; threshold at the {QUANTILE:g} quantile of {n_held} others")
    h, w = frame.image.shape
    image = frame.image[: h // 16 * 16, : w // 16 * 16]
    result.calibration = {"quantile": QUANTILE, "components": float(NOVELTY_COMPONENTS), "n_fit": float(len(fit)),
                          "n_heldout": float(len(held)),
                          "heldout_flagged": float(np.mean(held_scores > result.threshold)),
                          "training_frame_score": float(result.scores(_features(model, [image]))[0])}
    return result


def train_frame(image: np.ndarray, labels: np.ndarray, *, classes: list[str], pixel_size: dict, name: str,
                modality: str, out_path: str, budget_s: float, seed: int = 0, provenance: dict | None = None,
                base: str | None = None, progress: Callable[[dict], None] | None = None,
                threads: int = 2) -> dict[str, float]:
    """Fine-tune the frame U-Net on one labelled frame, export it to ``out_path`` with its card and check ONNX
    Runtime against torch; returns the metrics (those on the card, ``onnx_max_abs_diff`` and ``seconds``).

    ``image`` float32 ``[h, w]`` as received (counts or fractions of the beam; at least 64 px a side);
    ``labels`` uint8 ``[h, w]``: 0 unlabelled, k = ``classes[k - 1]`` (names of SEG_CLASSES); ``pixel_size``
    ``{"size", "units"}``, the frame's, which becomes the model's input pixel size; ``base``: the ONNX frame
    model to start from (None: the shipped stem-unet; a file that does not fit: from scratch, logged and on
    the card); ``budget_s``: seconds for the whole job, export included. ``progress`` gets ``{"epoch",
    "epochs", "loss", "val_accuracy"}`` every few steps. ValueError on bad input (the message says what to fix).
    """
    start = time.perf_counter()
    img, seg, classes, px_nm = _validate(image, labels, classes, pixel_size, name, modality, budget_s)
    budget_s = float(budget_s)
    if budget_s <= EXPORT_S + 1.0:
        raise ValueError(f"budget_s={budget_s:g} is too small: the export alone takes ~{EXPORT_S:g} s; give "
                         f"budget_s >= {math.ceil((EXPORT_S + 3.0) / TRAIN_SHARE_OF_BUDGET)}")
    labelled = seg != IGNORE
    labelled_share = float(labelled.mean())
    label_pixels = {c: int(np.sum(seg == SEG_CLASSES.index(c))) for c in classes}
    with seeded_run(seed, threads), threadpool_limits(threads, "blas"):
        prepared = prepare_frame(img, seg, px_nm)
        frame, centres, nn_px = prepared.frame, prepared.centres, prepared.nn_px
        train_labels, val = split_validation(frame, prepared.sigma_px, seed)
        frame.labels = train_labels
        if labelled_share < ANCHORED_BELOW:
            frame.anchors = np.argwhere(train_labels != IGNORE)
        side = min(MAX_CROP_PX, frame.crop)
        check = np.stack([img[:side, :side], img[-side:, -side:]])[:, None]

        base_path = DEFAULT_BASE if base is None else Path(base)
        fallback = None
        try:
            model = load_base(base_path, check[0, 0, :64, :64])
            mode = "fine-tune"
        except BaseMismatch as exc:
            fallback = str(exc)
            log.warning("live frame training: base not used, training from scratch: %s", fallback)
            model, mode = STEMUNet(), "scratch"
        run = _train(model, frame, prepared, val, mode=mode, seed=seed, start=start, budget_s=budget_s,
                     after_steps=post_steps(frame, prepared.batch), progress=progress)

        t_novelty = time.perf_counter()
        novelty = fit_frame_novelty(model, frame, seed)
        t_scores = time.perf_counter()
        metrics: dict[str, float] = {"final_train_loss": run.loss}
        metrics.update(training_frame_scores(model, prepared.postprocess, img, centres, nn_px,
                                             labelled=None if labelled_share == 1.0 else labelled))
        if run.val_accuracy is not None:
            metrics["val_accuracy"] = run.val_accuracy
        metrics.update({"steps": float(run.steps), "train_seconds": run.seconds,
                        "novelty_threshold": novelty.threshold})
        before_export = time.perf_counter() - start

        h, w = img.shape
        prov = dict(provenance or {})
        training: dict[str, Any] = {
            **prov,
            "method": (f"live: {'fine-tuned from ' + base_path.name if mode == 'fine-tune' else 'trained from scratch'}"
                       " on one labelled frame (models.live.frames)"),
            "base": str(base_path) if mode == "fine-tune" else None,
            "base_not_used": fallback,
            "classes": classes,
            "labelled_pixels": label_pixels,
            "source": {
                "image_shape": [h, w],
                "pixel_size_nm": px_nm,
                "image_sha256": digest(img),
                "labels_sha256": digest(np.asarray(labels)),
                "counts": frame.counts,
                "labelled_fraction": round(labelled_share, 4),
                "columns": int(len(centres)),
                "edge_slivers_dropped": prepared.dropped,
                "nn_spacing_px": round(nn_px, 3),
            },
            "steps": run.steps,
            "steps_planned": run.planned,
            "stopped": run.stopped,
            "seed": int(seed),
            "crop_px": frame.crop,
            "batch": prepared.batch,
            "optimizer": (f"AdamW lr {FINE_TUNE_LR if mode == 'fine-tune' else SCRATCH_LR:g}, {WARMUP_STEPS[mode]} "
                          f"warm-up steps then cosine to {FINAL_LR_SHARE:g} x over the planned steps, weight_decay "
                          f"{WEIGHT_DECAY:g}" + ("; batch norms frozen (the base's folded statistics)"
                                                 if mode == "fine-tune" else "")),
            "loss": (f"class-weighted cross-entropy, weights {list(CLASS_WEIGHTS)} (SEG_CLASSES order), against soft "
                     f"targets: atom columns exp(-d^2 / 2 s^2), s = {prepared.sigma_px:.3g} px, inside their label "
                     "blobs; unlabelled pixels carry no loss"),
            "augmentation": (f"random crops ({DEFECT_CROP_SHARE:.0%} placed on a defect"
                             + (", the others on a labelled pixel" if frame.anchors is not None else "")
                             + "), the 8 dihedral flips/rotations, "
                             + (f"binomial thinning of the counts (keep p log-uniform {list(THINNING_RANGE)}) on "
                                f"{THINNED_SHARE:.0%} of the crops, " if frame.counts else "")
                             + f"gain log-uniform {list(GAIN_RANGE)}; {PADDED_SHARE:.0%} of the crops reflect-padded "
                               "as the service pads"),
            "validation": (None if val is None else
                           f"{val.pixels} labelled pixels of {len(val.target)} {VALIDATION_TILE} x {VALIDATION_TILE} "
                           "tiles held out (pixel class against the hard version of the soft target)"),
            "budget_s": budget_s,
            "train_seconds": round(run.seconds, 2),
            "seconds_before_export": round(before_export, 2),
            "threads": int(threads),
            "torch": torch.__version__,
        }
        scan = prov.get("scan_id") or prov.get("scan")
        which = f"frame {prov['frame']}" if prov.get("frame") is not None else "one frame"
        description = (
            f"Atom columns and point defects in HAADF STEM frames at {px_nm:g} nm per pixel, trained live on {which} "
            f"of {f'scan {scan}' if scan else 'a scan'} ({h} x {w} px, {labelled_share:.0%} of its pixels labelled, "
            f"nearest-neighbour spacing {nn_px:.2f} px; "
            + (f"fine-tuned from {base_path.stem}" if mode == "fine-tune" else "trained from scratch")
            + f", {run.steps} steps): per-pixel class probabilities, turned into sub-pixel atom coordinates, a defect "
            "list and defect tracks by the service's post-processing. Meant for the rest of that scan; its metrics "
            "are measured on the labelled frame itself, and frames unlike it are flagged novel."
        )
        result = OneFrameResult(model=model, postprocess=prepared.postprocess, metrics=metrics, training=training,
                                check_inputs=check, novelty=novelty, pixel_size_nm=px_nm)
        card = model_card(result, name, description, modality=modality, version=VERSION)
        t_export = time.perf_counter()
        diff = export_model(WithFrameNovelty(model, novelty.head), check, out_path, card)
    done = time.perf_counter()
    seconds = done - start
    log.info("live frame model %s: %s in %.1fs (%s, %d of %d steps, %s; until training %.1fs, training %.1fs, "
             "novelty %.1fs, scores %.1fs, export %.1fs)", name, metrics, seconds, mode, run.steps, run.planned,
             run.stopped, t_novelty - run.seconds - start, run.seconds, t_scores - t_novelty, t_export - t_scores,
             done - t_export)
    return {**metrics, "onnx_max_abs_diff": float(diff), "seconds": seconds, "export_seconds": done - t_export}
