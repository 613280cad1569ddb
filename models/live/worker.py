"""The trainer process: a warm torch beside the service, reading ``train`` jobs from its standard input.

The pipe (docs/live-training.md, framed by ``scanlens.protocol.trainer_wire``) is the process's standard
output, so the first thing the process does is take that file descriptor for itself
(:func:`claim_stdout`) and point descriptor 1 and ``sys.stdout`` at standard error: whatever torch, a
library's C code or a stray ``print`` writes then lands in the log, never in the middle of a frame.

It then imports torch and the training code and runs one tiny job into a temporary folder (the first
training step and the first ONNX export of a process each cost a second or two: better before ``ready``
than inside the operator's first job), says ``ready`` and serves jobs one at a time until ``exit`` or the
end of its input. A job that fails is answered ``failed`` with a one-line reason and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import IO, Any

from scanlens.protocol.trainer_wire import read_frame, write_frame

log = logging.getLogger(__name__)

#: the fields every ``train`` request carries, then those of each kind
_COMMON = ("job", "kind", "name", "modality", "classes", "budget_s", "out")
_KIND_FIELDS = {"spectral": ("x", "y", "axis"), "frame": ("image", "labels", "pixel_size")}


def claim_stdout() -> IO[bytes]:
    """The process's real standard output as a binary stream for the pipe; descriptor 1 and ``sys.stdout``
    now go to standard error."""
    sys.stdout.flush()
    pipe = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return pipe


def one_line(exc: BaseException) -> str:
    """A failure's reason: a ValueError's message as it is (our checks word it for the user), anything else
    ``TypeName: message``; always one line."""
    text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def _train(request: dict[str, Any], progress, threads: int) -> dict[str, float]:
    """Run one ``train`` request (ValueError naming what is missing or wrong)."""
    missing = [f for f in _COMMON if f not in request]
    kind = request.get("kind")
    if kind not in _KIND_FIELDS and "kind" not in missing:
        raise ValueError(f"unknown training kind {kind!r}: expected 'spectral' or 'frame'")
    missing += [f for f in _KIND_FIELDS.get(kind, ()) if f not in request]
    if missing:
        raise ValueError(f"train request lacks {', '.join(repr(f) for f in missing)}")
    common = dict(classes=request["classes"], name=request["name"], modality=request["modality"],
                  out_path=request["out"], budget_s=request["budget_s"], seed=int(request.get("seed") or 0),
                  provenance=request.get("provenance"), base=request.get("base"), progress=progress, threads=threads)
    if kind == "spectral":
        from scanlens.models.live.spectral import train_spectral

        return train_spectral(request["x"], request["y"], axis=request["axis"], components=request.get("components"),
                              **common)
    try:
        from scanlens.models.live.frames import train_frame
    except ModuleNotFoundError as exc:
        if exc.name != "scanlens.models.live.frames":
            raise
        raise ValueError("frame training is not available in this build") from None
    return train_frame(image=request["image"], labels=request["labels"], pixel_size=request["pixel_size"], **common)


def handle(request: dict[str, Any], replies: IO[bytes], threads: int) -> None:
    """Answer one ``train`` request: ``progress`` per epoch, then ``done`` or ``failed``."""
    job = request.get("job")
    start = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        write_frame(replies, {"type": "progress", "job": job, **event, "elapsed_s": time.perf_counter() - start})

    try:
        metrics = _train(request, progress, threads)
    except Exception as exc:  # noqa: BLE001 (any failure of a job is reported; the trainer goes on)
        log.warning("job %s failed", job, exc_info=not isinstance(exc, ValueError))
        write_frame(replies, {"type": "failed", "job": job, "reason": one_line(exc)})
        return
    write_frame(replies, {"type": "done", "job": job, "path": str(request["out"]),
                          "metrics": {k: float(v) for k, v in metrics.items()},
                          "elapsed_s": time.perf_counter() - start})


def warm_up(threads: int) -> None:
    """Train and export a tiny model into a temporary folder, so that the first real job finds torch's
    autograd and the ONNX exporter initialised (about 1 and 2 seconds of a cold process)."""
    import numpy as np

    from scanlens.models.live.spectral import train_spectral

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2, dtype=np.uint8), 8)
    x = rng.poisson(np.where(y[:, None] == 0, 5.0, 9.0), (16, 16)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="scanlens-live-") as tmp:
        train_spectral(x, y, classes=["a", "b"], axis={"size": 16, "offset": 0.0, "scale": 1.0, "units": "eV"},
                       components=None, name="warm-up", modality="warm-up", out_path=os.path.join(tmp, "w.onnx"),
                       budget_s=30.0, threads=threads)


def serve(requests: IO[bytes], replies: IO[bytes], *, threads: int = 1, warm: bool = True) -> int:
    """Import torch, warm up, say ``ready``, then answer requests until ``exit`` or end of input; returns the
    exit status: 0, or 1 when a frame on the input cannot be read. ``replies`` must be the pipe alone
    (:func:`claim_stdout`)."""
    import torch

    torch.set_num_threads(threads)
    if warm:
        try:
            warm_up(threads)
        except Exception:  # noqa: BLE001 (a failed warm-up costs time in the first job, nothing else)
            log.warning("warm-up failed", exc_info=True)
    write_frame(replies, {"type": "ready", "pid": os.getpid(), "torch": torch.__version__})
    while True:
        try:
            request = read_frame(requests)
        except ValueError as exc:  # a cut or undecodable frame (TrainerWireError): the service end is broken
            log.error("trainer pipe: %s", exc)
            return 1
        if request is None:
            return 0
        op = request.get("op")
        if op == "exit":
            return 0
        if op == "train":
            handle(request, replies, threads)
        else:
            write_frame(replies, {"type": "failed", "job": request.get("job"),
                                  "reason": f"unknown op {op!r}: the trainer takes 'train' and 'exit'"})


def main(threads: int = 1) -> int:
    """The trainer process (``python -m scanlens.models.live``): claim the pipe, serve on standard input."""
    replies = claim_stdout()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="scanlens trainer %(levelname)s %(name)s: %(message)s")
    try:
        return serve(sys.stdin.buffer, replies, threads=threads)
    except BrokenPipeError:  # the service closed its end: nobody is left to answer
        log.error("trainer pipe closed by the service")
        return 1
    finally:
        try:
            replies.close()
        except OSError:
            pass
