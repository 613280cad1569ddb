"""Live training jobs: the trainer process beside the service, and what a ``train`` request sets going.

``Jobs.submit`` checks a request against the scan (``pipeline/live.py``) and answers at once with a job id;
the job then runs as a task: the labelled data goes down the pipe to the trainer process
(``python -m scanlens.models.live``, torch from the ``train`` extra: the service never imports torch), its
progress comes back and is published as ``train_update`` messages, the ONNX file it writes is loaded and
warmed in a thread while ingest goes on, attached to the scan between two messages, and the lines received
before are re-recognized in batches and re-published with the new revision. One job runs at a time; a job
that fails (bad input the trainer finds, a crash, the budget passed) leaves the scan and its recognizers as
they were and says why (a ``train_update`` ``failed`` and a ``train_failed`` event). docs/live-training.md.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import itertools
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline import (DEFAULT_TILE_PX, AxisError, InferenceWorker, LabelError, ModelError, Publication, ScanManager,
                        SpectraRetention, TrainingSet, open_recognizer, training_set)
from ..protocol import topics
from ..protocol.codec import ProtocolError, buffer_to_array
from ..protocol.messages import Request, TrainUpdate
from ..protocol.trainer_wire import TrainerWireError, pack, read_frame_async
from ..recording import Recorder, received_data

log = logging.getLogger(__name__)

#: what a train request gets when torch is not installed
NO_TORCH = ("live training needs torch, which this installation lacks: install the train extra "
            "(pip install 'scanlens[train]', which pins torch==2.13.0) and restart the service")
#: seconds the trainer may take to start (import torch) before it counts as failed
START_TIMEOUT_S = 120.0
#: seconds past its budget a job may run before the trainer is killed: a share of the budget, at least this
GRACE_S = 5.0
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._\-]")


def trainer_missing() -> str | None:
    """Why live training cannot run here (no torch), or None."""
    return NO_TORCH if importlib.util.find_spec("torch") is None else None


def default_name(scan_id: str) -> str:
    """``<scan_id>-live``, made a valid recognizer name (scan ids may hold ``:``)."""
    return _NAME_CHARS.sub("-", scan_id)[:59] + "-live"


class TrainerFailed(RuntimeError):
    """The trainer could not do the job; the text says why, in one line."""


class TrainerProcess:
    """The warm trainer: a child process with pipes, started once and kept for later jobs."""

    def __init__(self, threads: int = 1, command: Sequence[str] | None = None):
        self.command = list(command) if command else [sys.executable, "-m", "scanlens.models.live",
                                                      "--threads", str(threads)]
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        if self.alive:
            return
        self.stderr_tail.clear()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=2**20)
        self._stderr_task = asyncio.create_task(self._drain_stderr(self.proc), name="trainer-stderr")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await self.read()
        except TimeoutError:
            await self.stop()
            raise TrainerFailed(f"the trainer did not start within {START_TIMEOUT_S:g} s") from None
        if ready is None or ready.get("type") != "ready":
            why = await self.why_ended() if ready is None else f"it said {ready!r} instead of ready"
            await self.stop()
            raise TrainerFailed(f"the trainer did not start: {why}")
        log.info("trainer started (pid %s, torch %s)", ready.get("pid"), ready.get("torch"))

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            log.debug("trainer: %s", text)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(pack(message))
        await self.proc.stdin.drain()

    async def read(self) -> dict[str, Any] | None:
        """The trainer's next message; None when it has ended."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            return await read_frame_async(self.proc.stdout)
        except TrainerWireError as exc:
            log.error("trainer pipe: %s", exc)
            return None

    async def why_ended(self) -> str:
        """One line: the exit code and the last line the trainer wrote to its standard error (waiting a
        moment for both: its pipe closes before the process is reaped)."""
        if self.proc is not None:
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
                    if self._stderr_task is not None:
                        await asyncio.shield(self._stderr_task)
            except TimeoutError:
                pass
        code = self.proc.returncode if self.proc is not None else None
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        return f"the trainer process ended (exit code {code})" + (f": {last}" if last else "")

    async def stop(self) -> None:
        """Kill the process (a job past its budget, or the service stopping) and reap it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            log.error("trainer process %s did not end after SIGKILL", self.proc.pid)
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            await asyncio.gather(self._stderr_task, return_exceptions=True)
        self.proc = None


@dataclass
class Job:
    id: str
    data: TrainingSet
    name: str
    revision: int
    budget_s: float
    base: str | None
    held: bool = False  # the scan is kept open until the job ends (ScanManager.hold)
    #: a recorded scan without retain: its earlier lines are read back from the recording first (the request's
    #: labels, classes and frame, to build the training set again then)
    read_back: tuple[np.ndarray, list[str], int | None] | None = None
    t0: float = field(default_factory=time.perf_counter)

    def update(self, state: str, **fields: Any) -> Publication:
        return Publication(topics.scan_topic(self.data.scan_id, topics.TRAIN), TrainUpdate(
            job=self.id, scan_id=self.data.scan_id, state=state, recognizer=self.name, revision=self.revision,
            elapsed_s=time.perf_counter() - self.t0, **fields))


@dataclass(frozen=True)
class TrainingOptions:
    """The service settings live training reads."""

    model_dir: Path | None  # where trained models are kept (user_model_dir); None: a temporary directory
    budget_s: float = 8.0  # spectral jobs without budget_s
    frame_budget_s: float = 25.0  # frame jobs without budget_s
    threads: int = 1  # the trainer's torch threads
    inference_threads: Any = 1  # the new recognizer's session, as the others
    providers: Sequence[str] = ("CPU",)
    max_batch_pixels: int = 4096
    frame_tile_px: int = DEFAULT_TILE_PX  # a new frame recognizer's tiles, as the others


class Jobs:
    """Train requests of this service: validation, the job queue, the trainer, hot swap and redo."""

    def __init__(self, scans: ScanManager, publish: Callable[[Sequence[Publication]], Awaitable[None]],
                 serve_worker: Callable[[InferenceWorker, InferenceWorker | None], None], options: TrainingOptions,
                 trainer: TrainerProcess | None = None):
        self.scans = scans
        self.publish = publish
        self.serve_worker = serve_worker
        self.options = options
        self.trainer = trainer or TrainerProcess(options.threads)
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()  # one job at a time on the one trainer
        self._tasks: set[asyncio.Task] = set()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.revisions: dict[str, int] = {}
        #: the service's recorder (``serve --record``): a recorded scan can be trained on without retain
        self.recorder: Recorder | None = None

    async def start_trainer(self) -> None:
        """Start the trainer unless it runs (counted: ``trainer_starts``; ``trainer_ready`` is 1 while it runs)."""
        if self.trainer.alive:
            return
        self.scans.counters["trainer_ready"] = 0
        await self.trainer.start()
        self.scans.counters["trainer_starts"] += 1
        self.scans.counters["trainer_ready"] = 1

    async def _stop_trainer(self) -> None:
        await self.trainer.stop()
        self.scans.counters["trainer_ready"] = 0

    # ------------------------------------------------------------------ the request

    def submit(self, request: Request, buffers: list[memoryview]) -> dict[str, Any]:
        """Check a train request and start its job; the reply's result. ProtocolError when it cannot run."""
        if (missing := trainer_missing()) is not None:
            raise ProtocolError("bad_message", missing)
        scan = self.scans.find_scan(request.scan_id)
        if not request.classes:
            raise ProtocolError("bad_message", "train needs classes: the names of label values 1, 2, ...")
        labels = self._labels(request, buffers)
        read_back = (scan.retained is None and not scan.start.imaging and not scan.closed
                     and self.recorder is not None and self.recorder.recording(scan.scan_id))
        if read_back:  # keep what arrives from now on; the job reads the earlier lines back
            self.scans.keep_from_now(scan)
        try:
            data = training_set(scan, labels, list(request.classes), request.frame, received=not read_back)
        except LabelError as exc:
            if read_back:
                self.scans.stop_keeping(scan)
            raise ProtocolError("bad_message", str(exc), scan_id=scan.scan_id) from None
        name = request.name or default_name(scan.scan_id)
        current = self.scans.processors.get(name)
        if current is not None and not current.by_name_only:
            raise ProtocolError("bad_message", f"{name!r} names a recognizer loaded at start; give the live model "
                                "another name (name)", scan_id=scan.scan_id)
        base = None
        if request.base is not None:
            proc = self.scans.recognizers.get(request.base)
            if proc is None or not hasattr(proc, "model"):
                raise ProtocolError("bad_message", f"unknown base recognizer {request.base!r}; available: "
                                    f"{sorted(n for n, p in self.scans.recognizers.items() if hasattr(p, 'model'))}")
            base = str(proc.model.path)
        elif data.kind == "frame":  # fine-tune the scan's own frame recognizer
            base = next((str(b.processor.model.path) for b in scan.bindings.values()
                         if hasattr(b.processor, "model") and b.processor.takes == "frames"), None)
        revision = self._next_revision(name)
        budget = request.budget_s or (self.options.frame_budget_s if data.kind == "frame" else self.options.budget_s)
        job = Job(f"{scan.scan_id}#{next(self._ids)}"[-64:], data, name, revision, budget, base)
        job.held = self.scans.hold(scan)
        if read_back:
            job.read_back = (labels.copy(), list(request.classes), request.frame)
        task = asyncio.create_task(self._run(job), name=f"train-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.scans.counters["train_requests"] += 1
        return {"job": job.id, "recognizer": name, "revision": revision, "kind": data.kind,
                "labelled_pixels": data.labelled, "labelled_fraction": data.labelled_fraction,
                "label_counts": data.label_counts, "budget_s": budget}

    @staticmethod
    def _labels(request: Request, buffers: list[memoryview]) -> np.ndarray:
        specs = request.arrays or []
        if len(specs) != 1 or len(buffers) != 1:
            raise ProtocolError("bad_message", f"train carries the label image as its one buffer, described by "
                                f"arrays; got {len(specs)} specs and {len(buffers)} buffers")
        spec = request.arrays[0]
        if spec.dtype != "uint8":
            raise ProtocolError("bad_message", f"the label image must be uint8 (0 = unlabelled, k = classes[k-1]), "
                                f"got {spec.dtype}")
        try:
            return buffer_to_array(buffers[0], spec.dtype, spec.shape)
        except ValueError as exc:
            raise ProtocolError("bad_message", f"label image: {exc}") from None

    def _next_revision(self, name: str) -> int:
        current = self.scans.processors.get(name)
        loaded = int(current.model.card.training.get("revision", 1)) if current is not None else 0
        revision = max(self.revisions.get(name, 0), loaded) + 1
        self.revisions[name] = revision  # a second request before the first ends gets the next one
        return revision

    # ------------------------------------------------------------------ the job

    def _model_dir(self) -> Path:
        if self.options.model_dir is not None:
            self.options.model_dir.mkdir(parents=True, exist_ok=True)
            return self.options.model_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="scanlens-live-")
        return Path(self._tmp.name)

    async def _run(self, job: Job) -> None:
        try:
            async with self._lock:
                if job.read_back is not None:
                    await self._read_back(job)
                path = await self._train(job)
                await self._swap(job, path)
        except (TrainerFailed, LabelError, ModelError, AxisError, MemoryError, ProtocolError) as exc:
            await self._fail(job, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: said as such, and the service goes on
            log.exception("train job %s failed", job.id)
            await self._fail(job, f"internal: {type(exc).__name__}: {exc}")
        finally:
            if job.held:  # the scan may close now (its summary, if scan_end came meanwhile)
                job.held = False
                scan = self.scans.open_scans.get(job.data.scan_id)
                if scan is not None:
                    await self.publish(self.scans.release(scan))

    async def _fail(self, job: Job, reason: str) -> None:
        self.scans.counters["train_failed"] += 1
        await self.publish([job.update("failed", reason=reason),
                            self.scans.event("train_failed", f"job {job.id} ({job.name} revision {job.revision}): "
                                             f"{reason}; the scan goes on with its recognizers unchanged",
                                             scan_id=job.data.scan_id)])

    async def _read_back(self, job: Job) -> None:
        """A recorded scan without retain: the lines received before the request, read back from its journal
        (after the recorder has written everything queued) into the scan's kept data; then the training set."""
        assert self.recorder is not None and job.read_back is not None
        scan = self.scans.find_scan(job.data.scan_id)
        path = await self.recorder.journal_of(scan.scan_id)
        if path is None:
            raise TrainerFailed(f"scan {scan.scan_id}'s recording stopped (or never wrote a line): its earlier lines "
                                "cannot be read back; start the scan with retain=true to train on it")
        lines = await asyncio.to_thread(_read_lines, path, scan.retained)
        labels, classes, frame = job.read_back
        job.data = training_set(scan, labels, classes, frame)  # LabelError: labelled pixels never received
        log.info("job %s: %d lines of scan %s read back from %s", job.id, lines, scan.scan_id, path)

    async def _train(self, job: Job) -> Path:
        """The trainer's part: returns the ONNX file, renamed to ``<name>.onnx`` in the model directory."""
        await self.start_trainer()
        directory = self._model_dir()
        partial = directory / f".{job.name}.r{job.revision}.onnx.partial"
        provenance = {"live": True, "revision": job.revision, "scan_id": job.data.scan_id, "job": job.id,
                      "classes": job.data.classes, "label_counts": job.data.label_counts,
                      "labelled_fraction": job.data.labelled_fraction}
        await self.trainer.send({"op": "train", "job": job.id, "name": job.name, "budget_s": job.budget_s,
                                 "seed": 0, "out": str(partial), "provenance": provenance, "base": job.base,
                                 **job.data.fields()})
        await self.publish([job.update("started")])
        limit = job.budget_s + max(GRACE_S, 0.25 * job.budget_s)
        try:
            async with asyncio.timeout(limit):
                while True:
                    message = await self.trainer.read()
                    if message is None:
                        raise TrainerFailed(await self.trainer.why_ended())
                    if message.get("job") != job.id:
                        continue
                    kind = message.get("type")
                    if kind == "progress":
                        await self.publish([job.update("progress", **_progress(message))])
                    elif kind == "failed":
                        raise TrainerFailed(str(message.get("reason", "the trainer failed")))
                    elif kind == "done":
                        metrics = {k: float(v) for k, v in (message.get("metrics") or {}).items()
                                   if isinstance(v, (int, float))}
                        await self.publish([job.update("trained", metrics=metrics)])
                        break
        except TimeoutError:
            await self._stop_trainer()  # the next job starts a fresh one
            raise TrainerFailed(f"the job ran past its budget of {job.budget_s:g} s (killed after {limit:g} s); "
                                "give a larger budget_s or label fewer pixels") from None
        except TrainerFailed:
            if not self.trainer.alive:  # it crashed: reap it
                await self._stop_trainer()
            raise
        final = directory / f"{job.name}.onnx"
        os.replace(partial, final)
        return final

    async def _swap(self, job: Job, path: Path) -> None:
        """Load and warm the new recognizer in a thread, attach it at a message boundary, redo earlier lines."""
        o = self.options
        proc = await asyncio.to_thread(open_recognizer, path, threads=o.inference_threads, providers=o.providers,
                                       tile_px=o.frame_tile_px)
        if proc.name != job.name:
            raise ModelError(f"the trainer wrote a model named {proc.name!r}, not {job.name!r}")
        scan = self.scans.find_scan(job.data.scan_id)
        binding = self.scans.live_binding(scan.scan_id, proc, job.revision)
        waiting = len(scan.retained.lines) if isinstance(scan.retained, SpectraRetention) else 0
        # announced first, so that no subscriber sees the new recognizer's maps before it knows their arrays;
        # attached right after, with no await between
        await self.publish([job.update("swapped", outputs=binding.map_specs() or None, lines=waiting)])
        # registered and attached between two messages: nothing of the scan is half-routed
        worker, old = self.scans.add_processor(proc)
        self.serve_worker(worker, old)
        lines = self.scans.attach(scan.scan_id, binding)
        done = 0
        try:
            for items in self.scans.redo_items(scan, binding, lines, o.max_batch_pixels):
                results = await asyncio.to_thread(proc.process, items)
                await self.publish(self.scans.store_redone(scan, items, results))
                done += len(items)
        finally:
            await self.publish([job.update("redone", lines=done)])
        log.info("job %s: %s revision %d took over scan %s; %d earlier lines redone in %.1f s", job.id, job.name,
                 job.revision, scan.scan_id, done, time.perf_counter() - job.t0)

    async def aclose(self) -> None:
        """The service is stopping: cancel jobs, end the trainer."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.trainer.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def _read_lines(journal: Path, kept: SpectraRetention) -> int:
    """Keep the data messages of a journal that ``kept`` does not hold yet (in a thread); how many."""
    have = {line.seq for line in list(kept.lines)}
    n = 0
    for header, buffers in received_data(journal):
        if header.seq in have or len(buffers) != 1:
            continue
        spectra = buffer_to_array(buffers[0], header.dtype, header.shape)
        kept.keep(header.seq, header.row, header.col0, spectra)
        n += 1
    return n


def _progress(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in (("epoch", int), ("epochs", int), ("loss", float), ("val_accuracy", float)):
        value = message.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = kind(value)
    return out
