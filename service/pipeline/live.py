"""What a ``train`` request trains on: the labelled pixels of a retained scan (docs/live-training.md).

The operator's label image (``uint8``, 0 = unlabelled, k = ``classes[k-1]``) is checked against the scan and
what it kept (``retention.py``), and turned into the trainer's input: the labelled spectra with their
0-based class indices, on the scan's own axis, or one kept frame with its labels. Every way a request can
be wrong becomes a ``LabelError`` whose text says what to change; the scan is never touched here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .retention import FrameRetention, SpectraRetention
from .scan import ScanState


#: the most labelled spectra one request may train on: they are copied out of the scan's kept data and down the
#: trainer's pipe (65 536 spectra of 2048 channels: 512 MiB), and a few hundred per class already suffice
MAX_LABELLED_SPECTRA = 65_536


class LabelError(ValueError):
    """A train request that cannot be trained on, and why."""


@dataclass(frozen=True)
class TrainingSet:
    """The labelled data of one train request, ready for the trainer pipe (``fields``)."""

    scan_id: str
    kind: str  # "spectral" or "frame"
    modality: str
    classes: list[str]
    label_counts: dict[str, int]
    labelled_fraction: float  # of the scan's pixels (a frame's, for movies)
    arrays: dict[str, np.ndarray] = field(repr=False)  # x, y  or  image, labels
    extra: dict[str, Any] = field(default_factory=dict)  # axis, components  or  pixel_size, frame

    @property
    def labelled(self) -> int:
        return sum(self.label_counts.values())

    def fields(self) -> dict[str, Any]:
        """The ``train`` message's data fields (docs/live-training.md, "The trainer pipe")."""
        return {"kind": self.kind, "modality": self.modality, "classes": list(self.classes), **self.arrays,
                **self.extra}


def training_set(scan: ScanState, labels: np.ndarray, classes: list[str], frame: int | None, *,
                 received: bool = True) -> TrainingSet:
    """The labelled pixels of ``scan``; LabelError when the request does not fit the scan or its data.
    ``received=False``: do not check yet that the labelled pixels were received (a recorded scan whose lines
    are still to be read back from its recording; the job checks again once they are)."""
    sid, start = scan.scan_id, scan.start
    kept = scan.retained
    if kept is None:
        raise LabelError(f"scan {sid} does not keep its data: start it with retain=true in scan_start "
                         "(`Instrument.scan(..., retain=True)`, `scanlens sim eels --retain`) to train on it")
    if labels.ndim != 2 or tuple(labels.shape) != tuple(start.shape):
        what = "the scan's [rows, cols]" if not start.imaging else "the frame's [height, width]"
        raise LabelError(f"labels of shape {list(labels.shape)} do not match {what} {list(start.shape)}")
    top = int(labels.max()) if labels.size else 0
    if top > len(classes):
        raise LabelError(f"label value {top} has no class: {len(classes)} classes given ({classes}); label k "
                         "means classes[k-1], 0 = unlabelled")
    if len(set(classes)) != len(classes):
        raise LabelError(f"class names repeat: {classes}")
    mask = labels > 0
    if not mask.any():
        raise LabelError("no pixel is labelled (every label is 0 = unlabelled)")
    counts = np.bincount(labels[mask], minlength=len(classes) + 1)[1:]
    present = {c: int(n) for c, n in zip(classes, counts) if n}
    if len(present) < 2:
        raise LabelError(f"only one class is labelled ({next(iter(present))}): a recognizer needs at least two "
                         "classes to tell apart")
    if isinstance(kept, SpectraRetention):
        if frame is not None:
            raise LabelError(f"scan {sid} is a spectral scan: frame applies to movies only")
        if (n := int(np.count_nonzero(mask))) > MAX_LABELLED_SPECTRA:
            raise LabelError(f"{n} pixels are labelled; at most {MAX_LABELLED_SPECTRA} can be trained on at once: "
                             "label smaller regions (a few hundred pixels per class are enough)")
        missing = int(np.count_nonzero(mask & ~kept.have))
        if missing and received:
            raise LabelError(f"{missing} labelled pixels have not been received yet: label only pixels of lines "
                             "already sent")
        x = kept.values[mask]  # a copy: fancy indexing
        y = (labels[mask] - 1).astype(np.uint8)
        axis = start.axis.model_dump()
        return TrainingSet(sid, "spectral", start.modality, list(classes), present,
                           float(mask.mean()), {"x": x, "y": y}, {"axis": axis, "components": start.components})
    assert isinstance(kept, FrameRetention)
    if frame is None:
        raise LabelError(f"scan {sid} is a movie: say which frame the labels are of (frame)")
    image = kept.frame(frame)
    if image is None:
        have = list(kept.frames)
        raise LabelError(f"frame {frame} of scan {sid} is not kept: the service keeps the last "
                         f"{kept.keep_frames} frames ({have[0]}..{have[-1]})" if have else
                         f"frame {frame} of scan {sid} is not kept: no frame has been received yet")
    return TrainingSet(sid, "frame", start.modality, list(classes), present, float(mask.mean()),
                       {"image": image, "labels": labels.astype(np.uint8)},
                       {"pixel_size": start.pixel_size.model_dump(), "frame": frame})
