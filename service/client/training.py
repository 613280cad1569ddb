"""Live training from the client side: send a label image, follow the job until the new model has taken over.

    async with Control(ctl_ep) as ctl, Subscriber(pub_ep, topics_=[topics.scan_topic("s1", topics.TRAIN), ...]) as sub:
        final = await train_and_follow(ctl, sub, "s1", labels, ["CTO", "interface", "NGO"], on_update=print)

``train_and_follow`` subscribes first (a job's first updates come within milliseconds of the reply), sends the
``train`` request (``Control.train``), then returns the job's last ``train_update`` (``redone``: the new model
runs and the earlier lines are redone) or raises ``TrainFailed`` with the service's reason. ``scanlens label``
is this on the command line. docs/live-training.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..protocol.messages import TrainUpdate
from .control import Control, ServiceError
from .subscriber import Subscriber


class TrainFailed(ServiceError):
    """The train request was refused (``refused``), or its job failed later; ``str()`` is the service's reason."""

    def __init__(self, message: str, result: dict[str, Any] | None = None, *, refused: bool = False):
        super().__init__(message, result)
        self.refused = refused


async def train_and_follow(control: Control, sub: Subscriber, scan_id: str, labels: np.ndarray,
                           classes: Sequence[str], *, on_update: Callable[[TrainUpdate], Any] | None = None,
                           timeout: float = 120.0, **options: Any) -> TrainUpdate:
    """Send the request and wait for its job's end (``redone``); ``sub`` must already receive the scan's
    ``train`` topic (``Subscriber.wait_ready`` done). ``options``: name, base, budget_s, frame
    (``Control.train``). TrainFailed on refusal or failure; TimeoutError after ``timeout`` s of silence."""
    try:
        job = await control.train(scan_id, labels, classes, **options)
    except ServiceError as exc:
        raise TrainFailed(str(exc).removeprefix("train failed: "), exc.result, refused=True) from None
    while True:
        msg = await sub.recv(timeout)
        update = msg.header
        if not isinstance(update, TrainUpdate) or update.job != job["job"]:
            continue
        if on_update is not None:
            on_update(update)
        if update.state == "failed":
            raise TrainFailed(update.reason or "the job failed")
        if update.state == "redone":
            return update


def describe(update: TrainUpdate) -> str:
    """One line for a person: what the job is doing."""
    head = f"{update.elapsed_s:6.1f} s  {update.recognizer} r{update.revision}  {update.state}"
    if update.state == "progress":
        acc = f", validation accuracy {update.val_accuracy:.3f}" if update.val_accuracy is not None else ""
        loss = f", loss {update.loss:.4f}" if update.loss is not None else ""
        return f"{head}: epoch {update.epoch}/{update.epochs}{loss}{acc}"
    if update.state == "trained" and update.metrics:
        return head + ": " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(update.metrics.items()))
    if update.state in ("swapped", "redone") and update.lines is not None:
        what = "earlier lines to redo" if update.state == "swapped" else "earlier lines redone"
        return f"{head}: {update.lines} {what}"
    if update.state == "failed":
        return f"{head}: {update.reason}"
    return head
