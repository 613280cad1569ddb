"""``scanlens demo --live-train``: a sample the shipped models do not know, learnt from the operator's labels
during the scan (docs/live-training.md).

A simulated scan of a foreign sample streams into the service on loopback: the EELS CaTiO3 / interface /
NdGaO3 heterostructure (``scanlens sim eels --sample cto``), or BE-PFM bacteria with B. subtilis spores, a
class the shipped model lacks. The shipped recognizer flags it novel. Part way through, the demo plays the
operator: it labels a few small patches of each class in the rows already received (from the simulator's
ground truth, where a person would see an obvious region) and sends a ``train`` request. The trainer learns
them, the new model takes over the following lines and the earlier ones are redone; at the end the live
model's map is scored on every unlabelled pixel and drawn next to the shipped model's verdict, with the
labelled patches outlined. Torch runs only in the trainer process (the ``train`` extra).

Where the operator labels (:func:`choose_labels`): a few squares of every class in the rows already received,
spread over what has been seen — each class's next square in one of its least-used regions and as far as
possible from its earlier ones; the class that fills most of the view (the substrate) gets two squares a
turn. The BE-PFM substrate varies slowly over the scan (its stiffness, a 2 µm correlation length), so a few
background squares in one place teach only that place's background. Measured on BE-PFM, 4.5 % labelled at
80 % of the rows, accuracy on every unlabelled pixel (the shifts are ``models/live/spectral.py``'s drift
augmentation):

* random squares, each in another region than the last (before), no shifts: seeds 0-4 0.713 0.973 0.874
  0.905 0.990; the same with shifts of +-10 channels: worst of seeds 0-9 0.873;
* spread, background two a turn, no shifts: seeds 0-4 0.980 0.987 0.991 0.966 0.991, worst of 0-9 0.965;
* spread, background one / two / three a turn, shifts of +-10 channels: worst of 0-9 0.965 / 0.986 / 0.982;
* spread, background two a turn, shifts from the data (now): seeds 0-4 0.988 0.994 0.993 0.990 0.989, worst of
  0-9 0.987, mean 0.991; spore recall >= 0.987.

Smaller background squares (2 x 2, 3 x 3: more places, a smaller share of the labels) did worse: worst of seeds
0-4 0.898 / 0.866 against 0.934 with 4 x 4 (background one a turn, no shifts). Labelling earlier sees less of
the substrate and fewer cells: at 70 % of the rows worst of 0-9 0.970 (mean 0.987), at 55 % 0.944 (mean 0.979;
on two seeds the P. fluorescens cells of the unseen half are unlike the few seen, recall 0.66-0.76); 3 %
labelled at 80 %: worst 0.972, 2 %: 0.774. Hence BE-PFM's own :data:`DEFAULTS` (80 %, 4.5 %). EELS keeps 2 % at
55 %: seeds 0-9 worst 0.987, mean 0.993 (before: 0.983, 0.993).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanlens.app.config import Settings
from scanlens.app.server import running
from scanlens.client import Control, Instrument, ScanResult, Subscriber, TrainFailed, train_and_follow
from scanlens.protocol import PixelSize, topics

from .figures import Panel, render_panels

LOOPBACK = "tcp://127.0.0.1:0"


@dataclass(frozen=True)
class LiveSample:
    """What the demo scans: a simulator source, its ground-truth class map and class names, the shipped
    recognizer that meets it, and which pixels are safely inside a region (where the operator labels)."""

    modality: str
    source: Any  # a scanlens.sim source: shape, axis, meta, line(row), optional components and scan_step
    truth: np.ndarray  # uint8 [rows, cols], index into classes
    classes: list[str]
    shipped: str
    interior: np.ndarray  # bool [rows, cols]: far from any other class

    @property
    def pixel(self) -> tuple[float, str] | None:
        step = getattr(self.source, "scan_step", None)
        return (step.size, step.units) if isinstance(step, PixelSize) else None


def _interior(truth: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose whole (2 margin + 1)² neighbourhood has their class."""
    rows, cols = truth.shape
    inside = np.ones_like(truth, dtype=bool)
    padded = np.pad(truth, margin, mode="edge")
    for dr in range(-margin, margin + 1):
        for dc in range(-margin, margin + 1):
            inside &= padded[margin + dr: margin + dr + rows, margin + dc: margin + dc + cols] == truth
    return inside


def eels_sample(rows: int, cols: int, seed: int) -> LiveSample:
    from scanlens.sim.eels import EELSConfig, EELSSource

    source = EELSSource(EELSConfig(rows=rows, cols=cols, seed=seed, sample="cto"))
    truth = source.sample.phase.astype(np.uint8)
    core = source.sample.abundance.max(axis=-1) > 0.9  # an operator labels the unmixed middle of a layer
    return LiveSample("eels", source, truth, list(source.sample.phases), "eels-mlp", _interior(truth, 1) & core)


def bepfm_sample(rows: int, cols: int, seed: int) -> LiveSample:
    from scanlens.sim.bepfm import BEPFMConfig, BEPFMSource

    source = BEPFMSource(BEPFMConfig(rows=rows, cols=cols, seed=seed, spores_per_100um2=10.0))
    truth = source.sample.label.astype(np.uint8)
    return LiveSample("bepfm", source, truth, list(source.sample.classes), "bepfm-mlp", _interior(truth, 1))


SAMPLES = {"eels": eels_sample, "bepfm": bepfm_sample}
#: per sample, when the operator labels (share of the rows received) and the most of the scan they label, for
#: a ``live_train_demo`` call that gives none (module docstring: BE-PFM's substrate needs more of the scan seen)
DEFAULTS: dict[str, tuple[float, float]] = {"eels": (0.55, 0.02), "bepfm": (0.8, 0.045)}


#: a class covering more than this share of the seen interior (the substrate, the matrix) gets twice the
#: squares of the others: it is where the sample's slow variations show (module docstring)
DOMINANT_SHARE = 0.5


def choose_labels(sample: LiveSample, rows_seen: int, budget: float, patch: int, seed: int) -> np.ndarray:
    """The operator's label image: small squares wholly inside regions (``sample.interior``) of the first
    ``rows_seen`` rows, as a person would mark obvious examples of every class spread over what they have
    seen: the classes in turn, one square each per turn (two for a class that covers more than
    :data:`DOMINANT_SHARE` of the seen interior, the background), until ``budget`` of all pixels is labelled.
    A class's next square lies in one of its regions (layer, cell) used least so far and, among those, as far
    as possible from its earlier squares (the first at random), so that one large region (the substrate) is
    marked all over, not in a few places. A region too thin for a ``patch`` x ``patch`` square gets the largest
    square that fits (at least 2 x 2). Label k + 1 for class k, 0 elsewhere."""
    from scipy import ndimage

    rows, cols = sample.truth.shape
    rng = np.random.default_rng(seed)
    labels = np.zeros((rows, cols), np.uint8)
    limit = int(budget * rows * cols)
    inside = sample.interior.copy()
    inside[rows_seen:] = False
    spots: dict[int, np.ndarray] = {}  # class -> [m, 4] candidate squares (row, col, size, region), shuffled
    for k in np.unique(sample.truth[:rows_seen]):
        regions, n = ndimage.label(inside & (sample.truth == k))
        found = []
        for region in range(1, n + 1):
            mask = regions == region
            for size in range(patch, 1, -1):
                fits = ndimage.binary_erosion(mask, np.ones((size, size), bool), origin=-(size // 2), border_value=0)
                here = [(int(r), int(c), size, region) for r, c in zip(*np.nonzero(fits))
                        if r + size <= rows_seen and c + size <= cols and mask[r:r + size, c:c + size].all()]
                if here:
                    found += here
                    break
        if found:
            spots[int(k)] = np.array(found)[rng.permutation(len(found))]
    if not spots:
        return labels
    area = {k: int(np.count_nonzero(inside & (sample.truth == k))) for k in spots}
    per_turn = {k: 2 if area[k] > DOMINANT_SHARE * sum(area.values()) else 1 for k in spots}
    far = {k: np.full(len(v), np.inf) for k, v in spots.items()}  # squared distance to the class's squares
    used = {k: np.zeros(int(v[:, 3].max()) + 1, int) for k, v in spots.items()}  # squares per region
    while spots:
        for k in list(spots):
            placed = 0
            while placed < per_turn[k] and k in spots:
                cand = spots[k]
                times = used[k][cand[:, 3]]
                pick = int(np.argmax(np.where(times == times.min(), far[k], -1.0)))
                r, c, z, region = (int(v) for v in cand[pick])
                keep = np.ones(len(cand), bool)
                keep[pick] = False
                if not labels[r:r + z, c:c + z].any():  # else it overlaps one of the class's squares: drop it
                    if np.count_nonzero(labels) + z * z > limit:
                        return labels
                    labels[r:r + z, c:c + z] = k + 1
                    used[k][region] += 1
                    placed += 1
                    centre = cand[:, :2] + cand[:, 2:3] / 2 - (r + z / 2, c + z / 2)
                    far[k] = np.minimum(far[k], (centre ** 2).sum(axis=1))
                spots[k], far[k] = cand[keep], far[k][keep]
                if not len(spots[k]):
                    del spots[k]
    return labels


@dataclass
class LiveTrainReport:
    report: dict[str, Any]
    result: ScanResult
    labels: np.ndarray


async def run_live_train(sample: LiveSample, *, dwell_us: float, label_at: float, label_fraction: float,
                         patch: int, seed: int, model_dir: Path, budget_s: float | None = None,
                         timeout: float = 180.0, on_update=None) -> LiveTrainReport:
    """The scan, the labels at ``label_at`` of its rows, the train job and the scoring (see the module notes)."""
    rows, cols = sample.truth.shape
    settings = Settings(ingest=LOOPBACK, publish=LOOPBACK, control=LOOPBACK, trainer="warm",
                        user_model_dir=model_dir)
    scan_id = f"live-{sample.modality}-{seed}"
    name = f"{sample.modality}-sample-{seed}"
    components = getattr(sample.source, "components", None)
    label_row = max(patch + 1, min(rows, int(round(label_at * rows))))
    line_s = dwell_us * 1e-6 * cols
    async with running(settings) as server:
        ep = server.endpoints
        async with Instrument(ep["ingest"]) as inst, Control(ep["control"]) as control, \
                Subscriber(ep["publish"], scan_id=scan_id) as sub, \
                Subscriber(ep["publish"], topics_=[topics.scan_topic(scan_id, topics.TRAIN)]) as train_sub:
            await sub.wait_ready()
            await train_sub.wait_ready()
            collector = asyncio.create_task(sub.collect_scan(scan_id, timeout=timeout, control=control))
            job: dict[str, Any] = {}

            async def train(labels: np.ndarray) -> None:
                job["t0"] = time.perf_counter()
                try:
                    final = await train_and_follow(control, train_sub, scan_id, labels, sample.classes, name=name,
                                                   budget_s=budget_s, timeout=timeout, on_update=on_update)
                    job["final"] = final
                except TrainFailed as exc:
                    job["failed"] = str(exc)

            t_start = time.perf_counter()
            trainer_task = None
            async with inst.scan(scan_id, sample.modality, (rows, cols), sample.source.axis, components=components,
                                 recognizers=[sample.shipped], meta=dict(sample.source.meta), retain=True,
                                 scan_step=getattr(sample.source, "scan_step", None)) as scan:
                for row in range(rows):
                    if row == label_row:
                        labels = choose_labels(sample, row, label_fraction, patch, seed)
                        # the lines already sent must be in the service before their pixels can be trained on
                        await _received(server, scan_id, row * cols)
                        trainer_task = asyncio.create_task(train(labels))
                    await scan.send_line(row, sample.source.line(row))
                    wait = t_start + (row + 1) * line_s - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
            if trainer_task is None:
                raise ValueError(f"the scan has only {rows} rows: nothing left to label at {label_at:.0%} of them")
            await trainer_task
            result = await collector
    return LiveTrainReport(score(sample, result, labels, job, name), result, labels)


async def _received(server, scan_id: str, pixels: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while (scan := server.scans.open_scans.get(scan_id)) is None or scan.pixels_received < pixels:
            await asyncio.sleep(0.01)


def score(sample: LiveSample, result: ScanResult, labels: np.ndarray, job: dict[str, Any], name: str) -> dict[str, Any]:
    s = result.summary
    unlabelled = labels == 0
    report: dict[str, Any] = {
        "modality": sample.modality, "scan_id": s.scan_id, "state": s.state, "pixels": s.pixels_expected,
        "lost": s.n_lost, "rejected": len(s.rejected), "shipped_recognizer": sample.shipped,
        "novel_fraction_before": s.recognizers[sample.shipped].novel_fraction,
        "labelled_pixels": int(np.count_nonzero(labels)), "labelled_fraction": float(np.mean(labels > 0)),
        "classes": sample.classes, "recognizer": name,
    }
    if "failed" in job:
        report.update(accuracy=None, time_to_model_s=None, error=job["failed"])
        return report
    final = job["final"]
    updates = {u.state: u for u in result.train_updates if u.job == final.job}
    live = result.maps[name]["class"]
    report.update(
        accuracy=float(np.mean(live[unlabelled] == sample.truth[unlabelled])),
        accuracy_per_class={c: float(np.mean(live[unlabelled & (sample.truth == k)] == k))
                            for k, c in enumerate(sample.classes) if np.any(unlabelled & (sample.truth == k))},
        live_filled_fraction=float(result.filled[name].mean()),
        time_to_model_s=updates["swapped"].elapsed_s if "swapped" in updates else None,
        time_to_redone_s=final.elapsed_s, lines_redone=final.lines,
        revision=final.revision,
        validation_accuracy=(updates["trained"].metrics or {}).get("val_accuracy") if "trained" in updates else None,
        novel_fraction_after=(s.recognizers[name].novel_fraction if name in s.recognizers else None),
    )
    return report


def draw(path: Path, sample: LiveSample, out: LiveTrainReport) -> Path:
    """Before (the shipped model's classes and novelty) and after (the live model), labels outlined."""
    r, result = out.report, out.result
    shipped = result.maps[sample.shipped]
    shipped_labels = result.started.outputs[sample.shipped][0].labels or []
    labelled = out.labels > 0
    panels = [
        Panel("ground truth", sample.truth, "classes", labels=sample.classes, pixel=sample.pixel),
        Panel(f"before: {sample.shipped} (trained on other samples)", shipped["class"], "classes",
              labels=shipped_labels, pixel=sample.pixel),
        Panel(f"before: {sample.shipped} novel ({r['novel_fraction_before']:.0%} of pixels)",
              shipped["novel"].astype(float), "map", cmap="magma", vmin=0, vmax=1, pixel=sample.pixel,
              cbar_label="novel (1 = unlike its training data)"),
    ]
    if r.get("accuracy") is not None:
        live = result.maps[r["recognizer"]]["class"]
        wrong = (live != sample.truth) & ~labelled
        panels.append(Panel(f"after: {r['recognizer']} (labelled patches outlined white)", live, "classes",
                            labels=sample.classes, contour=labelled, contour_color="white", marks=wrong,
                            marks_label="wrong", pixel=sample.pixel))
    title = (f"scanlens live training — {sample.modality}: {r['labelled_fraction']:.1%} of pixels labelled; "
             + (f"accuracy on the unlabelled pixels {r['accuracy']:.3f}, model in {r['time_to_model_s']:.1f} s"
                if r.get("accuracy") is not None else f"training failed: {r.get('error')}"))
    return render_panels(path, panels, ncols=2, title=title)


def live_train_demo(modality: str, *, rows: int, cols: int, dwell_us: float, seed: int, out: Path, as_json: bool,
                    label_at: float | None = None, label_fraction: float | None = None, patch: int = 4) -> None:
    """The ``--live-train`` command: run, score, draw, report; one line and a non-zero exit when it fails.
    ``label_at`` / ``label_fraction`` None: the sample's :data:`DEFAULTS`."""
    import importlib.util
    import json

    import typer

    from scanlens.client import ServiceError
    from scanlens.client.training import describe

    def fail(message: str, code: int = 1) -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code)

    if modality not in SAMPLES:
        fail(f"--live-train runs on eels or bepfm, not {modality!r}", 2)
    default_at, default_fraction = DEFAULTS[modality]
    label_at = default_at if label_at is None else label_at
    label_fraction = default_fraction if label_fraction is None else label_fraction
    if importlib.util.find_spec("torch") is None:
        fail("--live-train needs torch for the trainer: pip install -e '.[train]' (torch==2.13.0, the CPU wheel)", 2)
    if rows < 4 * patch or cols < 4 * patch:
        fail(f"--live-train needs a scan of at least {4 * patch} x {4 * patch} pixels", 2)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create --out {out}: {exc.strerror or exc}", 2)
    sample = SAMPLES[modality](rows, cols, seed)
    if not as_json:
        typer.echo(f"scanning a {rows} x {cols} {modality} sample of {', '.join(sample.classes)} "
                   f"(classes {sample.shipped} does not know); labelling {label_fraction:.0%} at most of it "
                   f"when {label_at:.0%} of the rows are in", err=True)
    on_update = None if as_json else (lambda u: typer.echo(describe(u), err=True))
    try:
        outcome = asyncio.run(run_live_train(sample, dwell_us=dwell_us, label_at=label_at,
                                             label_fraction=label_fraction, patch=patch, seed=seed,
                                             model_dir=out / "models", on_update=on_update))
    except (ServiceError, TimeoutError, OSError, ValueError) as exc:
        fail("live-train demo failed: " + (" ".join(str(exc).split()) or type(exc).__name__))
    report = outcome.report
    report["png"] = str(draw(out / f"demo-live-train-{modality}.png", sample, outcome))
    report["model"] = str(out / "models" / f"{report['recognizer']}.onnx")
    (out / f"demo-live-train-{modality}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"scan {report['scan_id']}: {report['pixels']} pixels, {report['lost']} lost ({report['state']})")
        typer.echo(f"before: {sample.shipped} flags {report['novel_fraction_before']:.1%} of the pixels novel")
        typer.echo(f"labelled: {report['labelled_pixels']} pixels ({report['labelled_fraction']:.2%})")
        if report.get("accuracy") is not None:
            typer.echo(f"after: {report['recognizer']} accuracy on every unlabelled pixel {report['accuracy']:.4f} "
                       f"(model in {report['time_to_model_s']:.1f} s, {report['lines_redone']} earlier lines redone)")
        typer.echo(f"figure: {report['png']}")
    if report.get("accuracy") is None:
        fail(f"the train job failed: {report.get('error')}")
    if report["lost"]:
        fail(f"{report['lost']} messages were lost")
