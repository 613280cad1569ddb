"""The live trainer (``models/live``, docs/live-training.md): a spectral model trained on an operator's labelled
pixels, served through the service's own loader, and the trainer process on its pipes.

Everything is real: torch trains, the ONNX file is written and opened with ``open_recognizer`` as the service
opens it, and the process is ``python -m scanlens.models.live`` on real pipes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from scanlens.models.export import read_card  # noqa: E402
from scanlens.models.live.spectral import train_spectral  # noqa: E402
from scanlens.pipeline.loading import open_recognizer  # noqa: E402
from scanlens.pipeline.spectral import SpectralRecognizer  # noqa: E402
from scanlens.protocol.trainer_wire import pack, read_frame  # noqa: E402

CLASSES = ["STO", "LSMO", "BFO"]
AXIS = {"size": 512, "offset": 0.0, "scale": 0.25, "units": "eV"}
E = np.arange(AXIS["size"], dtype=np.float64)
#: (centre channel, width, height) of the peaks of each kind of spectrum; the last kind is never labelled
PEAKS = [[(80, 6, 1.0), (300, 10, 0.6)], [(140, 8, 1.0), (300, 10, 0.3), (420, 6, 0.5)],
         [(220, 7, 1.0), (360, 12, 0.7)], [(60, 5, 0.8), (260, 9, 1.0), (470, 7, 0.9)]]
FOREIGN = 3


def eels_like(kinds: np.ndarray, rng: np.random.Generator, dose: tuple[float, float] = (0.7, 1.4)) -> np.ndarray:
    """Poisson counts of a decaying background and a few Gaussian peaks per kind, the dose varying per pixel
    (thickness across a scan)."""
    templates = []
    for peaks in PEAKS:
        s = 20.0 * np.exp(-E / 200.0) + 2.0
        for centre, width, height in peaks:
            s = s + 30.0 * height * np.exp(-0.5 * ((E - centre) / width) ** 2)
        templates.append(s)
    scale = np.exp(rng.uniform(np.log(dose[0]), np.log(dose[1]), len(kinds)))
    return rng.poisson(np.stack(templates)[kinds] * scale[:, None]).astype(np.float32)


def pfm_like(kinds: np.ndarray, rng: np.random.Generator, channels: int = 64) -> np.ndarray:
    """``[n, channels, 2]``: amplitude and phase over a band around a resonance; up and down domains differ
    by the phase's sign, the third kind (a non-piezoelectric region) by a weak amplitude."""
    f = np.linspace(-1.0, 1.0, channels)
    f0 = rng.normal(0.0, 0.05, len(kinds))[:, None]
    strength = np.where(kinds == 2, 0.2, 1.0)[:, None] * rng.uniform(0.8, 1.2, (len(kinds), 1))
    amplitude = strength / np.sqrt(1.0 + ((f - f0) / 0.2) ** 2) + rng.normal(0.0, 0.03, (len(kinds), channels))
    polarity = np.where(kinds == 1, -1.0, 1.0)[:, None]
    phase = polarity * (np.pi / 2 - np.arctan((f - f0) / 0.2)) + rng.normal(0.0, 0.1, (len(kinds), channels))
    return np.stack([np.abs(amplitude), phase], axis=-1).astype(np.float32)


def labelled(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(CLASSES), dtype=np.uint8), n_per_class)
    return eels_like(y, np.random.default_rng(seed)), y


def _train(tmp_path, x, y, **kw):
    args = dict(classes=CLASSES, axis=AXIS, components=None, name="live-sto", modality="eels",
                out_path=str(tmp_path / "live.onnx"), budget_s=10.0, seed=0)
    args.update(kw)
    return train_spectral(x, y, **args)


@pytest.fixture(scope="module")
def eels_model(tmp_path_factory):
    """A model trained on 150 labelled pixels (50 per class), its metrics, progress events and seconds."""
    out = tmp_path_factory.mktemp("live") / "live-sto.onnx"
    x, y = labelled(50, seed=1)
    events: list[dict] = []
    start = time.perf_counter()
    metrics = train_spectral(x, y, classes=CLASSES, axis=AXIS, components=None, name="live-sto", modality="eels",
                             out_path=str(out), budget_s=10.0, seed=0, progress=events.append,
                             provenance={"scan_id": "scan-17", "revision": 2})
    return out, metrics, events, time.perf_counter() - start


def test_spectral_model_recognizes_and_flags_through_the_service_loader(eels_model):
    path, metrics, events, seconds = eels_model
    print(f"trained and exported in {seconds:.2f} s: {metrics}")
    rec = open_recognizer(path)
    assert isinstance(rec, SpectralRecognizer)
    rng = np.random.default_rng(2)
    kinds = np.repeat(np.arange(len(CLASSES)), 600)
    known = rec.run(eels_like(kinds, rng))
    assert set(known) >= {"class", "confidence", "novelty", "novel"}
    accuracy = float(np.mean(known["class"] == kinds))
    known_flagged = float(np.mean(known["novel"]))
    foreign_flagged = float(np.mean(rec.run(eels_like(np.full(600, FOREIGN), rng))["novel"]))
    print(f"accuracy {accuracy:.4f}, known flagged {known_flagged:.4f}, foreign flagged {foreign_flagged:.4f}")
    assert accuracy >= 0.98
    assert known_flagged <= 0.05
    assert foreign_flagged >= 0.90
    assert metrics["val_accuracy"] >= 0.98 and metrics["onnx_max_abs_diff"] < 1e-4

    # progress after every epoch, 1-based, the last one the epochs the card records
    assert [e["epoch"] for e in events] == list(range(1, len(events) + 1))
    assert all(set(e) == {"epoch", "epochs", "loss", "val_accuracy"} for e in events)
    card = read_card(path)
    assert card.name == "live-sto" and card.version == "1" and card.modality == "eels"
    assert card.input.axis.size == 512 and card.input.axis.units == "eV" and card.input.components is None
    assert [o.labels for o in card.outputs if o.role == "class_probabilities"] == [CLASSES]
    assert card.novelty is not None and card.novelty.threshold > 0
    assert card.novelty.calibration["quantile"] == 0.995 and card.novelty.calibration["n_heldout"] == 150
    assert "scan-17" in card.description
    assert card.training["scan_id"] == "scan-17" and card.training["revision"] == 2
    assert card.training["label_counts"] == {"STO": 50, "LSMO": 50, "BFO": 50}
    assert card.training["labelled_pixels"] == 150
    assert card.training["train_pixels"] + card.training["validation_pixels"] == 150
    assert card.training["validation_pixels"] == 30
    assert card.training["epochs"] == len(events)
    assert {"val_accuracy", "train_accuracy"} <= set(card.metrics)


def test_components_train_load_and_are_deterministic(tmp_path):
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3, dtype=np.uint8), 40)
    x = pfm_like(y, rng)
    kw = dict(classes=["up", "down", "substrate"], axis={"size": 64, "offset": 300.0, "scale": 1.5, "units": "kHz"},
              components=["amplitude", "phase"], name="live-pfm", modality="bepfm", budget_s=10.0, seed=3)
    first = train_spectral(x, y, out_path=str(tmp_path / "a.onnx"), **kw)
    second = train_spectral(x, y, out_path=str(tmp_path / "b.onnx"), **kw)
    timing = {"train_seconds"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    a, b = open_recognizer(tmp_path / "a.onnx"), open_recognizer(tmp_path / "b.onnx")
    assert a.input_shape == (64, 2) and a.components == ["amplitude", "phase"]
    kinds = np.repeat(np.arange(3), 300)
    batch = pfm_like(kinds, rng)
    out_a, out_b = a.run(batch), b.run(batch)
    for name in ("class", "confidence", "novelty"):
        np.testing.assert_array_equal(out_a[name], out_b[name])
    assert np.mean(out_a["class"] == kinds) >= 0.98
    assert np.mean(out_a["novel"]) <= 0.05
    assert "signed components as they are" in a.card.input.normalization  # the phase is not count-like


def test_fine_tuning_from_a_live_base(eels_model, tmp_path):
    base, *_ = eels_model
    x, y = labelled(20, seed=7)
    metrics = _train(tmp_path, x, y, base=str(base), name="live-sto-2")
    card = read_card(tmp_path / "live.onnx")
    assert card.training["base"] == str(base) and metrics["val_accuracy"] >= 0.98
    with pytest.raises(ValueError, match="fine-tuning from that model is not possible; omit base"):
        _train(tmp_path, x[:, :256], y, axis={**AXIS, "size": 256}, base=str(base))
    with pytest.raises(ValueError, match="has classes"):
        _train(tmp_path, x, y, classes=["a", "b", "c"], base=str(base))
    with pytest.raises(ValueError, match="not a readable model"):
        _train(tmp_path, x, y, base=str(tmp_path / "absent.onnx"))


def test_training_stops_on_the_budget(tmp_path):
    """Classes that overlap never converge: the planned epochs would run, but 60 % of the budget ends it."""
    rng = np.random.default_rng(9)
    y = np.repeat(np.arange(2, dtype=np.uint8), 300)
    x = rng.poisson(np.where(y[:, None] == 0, 10.0, 10.3), (600, 512)).astype(np.float32)
    events: list[dict] = []
    _train(tmp_path, x, y, classes=["a", "b"], budget_s=0.05, progress=events.append)
    card = read_card(tmp_path / "live.onnx")
    assert card.training["stopped"] == "budget"
    assert len(events) == card.training["epochs"] < events[0]["epochs"]


@pytest.mark.parametrize("change, message", [
    (lambda x, y: (x, np.zeros_like(y)), "at least 2 classes must have labelled pixels; only 'STO' has"),
    (lambda x, y: (x[:-4], y[:-4]), "each labelled class needs at least 2 pixels: 'BFO' has 1"),
    (lambda x, y: (x, np.where(y == 2, 3, y).astype(np.uint8)), "label 3 is not a class index: there are 3 classes"),
    (lambda x, y: (np.where(np.arange(len(x))[:, None] == 4, np.nan, x).astype(np.float32), y),
     r"x has non-finite values \(NaN or inf\) in 1 labelled pixels \(the first is pixel 4\)"),
    (lambda x, y: (x, y[:-1]), "y must be \\[n\\] with one label per pixel of x"),
    (lambda x, y: (x[:, :100], y), "the axis has 512 channels but x has 100"),
    (lambda x, y: (x[..., None], y), "x has 1 components per channel; components must name them"),
])
def test_bad_inputs_are_refused_with_a_clear_message(tmp_path, change, message):
    x, y = labelled(5, seed=3)
    bad_x, bad_y = change(x, y)
    with pytest.raises(ValueError, match=message):
        _train(tmp_path, bad_x, bad_y)
    assert not (tmp_path / "live.onnx").exists()


def test_bad_request_fields(tmp_path):
    x, y = labelled(5, seed=3)
    for kw, message in [({"budget_s": 0.0}, "budget_s must be a positive"), ({"name": "no spaces"}, "model name"),
                        ({"classes": ["STO"]}, "classes must be 2 to 255"), ({"components": ["a"]}, "components")]:
        with pytest.raises(ValueError, match=message):
            _train(tmp_path, x, y, **kw)


# --------------------------------------------------------------------------- the trainer process


def _job(job: str, out, x: np.ndarray, y: np.ndarray, **kw) -> dict:
    return {"op": "train", "job": job, "kind": "spectral", "name": "live-pipe", "modality": "eels",
            "classes": CLASSES, "budget_s": 10.0, "seed": 0, "out": str(out), "provenance": {"scan_id": "s1"},
            "base": None, "x": x, "y": y, "axis": AXIS, "components": None, **kw}


def _replies(stream, until: str | None = None) -> list[dict]:
    """Frames until one of type ``until`` (or end of file); each must decode: nothing else is on the pipe."""
    frames = []
    while (frame := read_frame(stream)) is not None:
        frames.append(frame)
        if frame.get("type") == until:
            break
    return frames


def _start(args: list[str], stderr) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            env=env)


def test_trainer_process_end_to_end(tmp_path):
    x, y = labelled(30, seed=11)
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = _start(["-m", "scanlens.models.live", "--threads", "1"], err)
        try:
            (ready,) = _replies(proc.stdout, "ready")
            assert ready["type"] == "ready" and ready["pid"] == proc.pid and ready["torch"]

            proc.stdin.write(pack(_job("bad", tmp_path / "bad.onnx", x, np.zeros_like(y))))
            proc.stdin.write(pack({"op": "fly"}))
            proc.stdin.write(pack(_job("good", tmp_path / "good.onnx", x, y)))
            proc.stdin.flush()
            (failed,) = _replies(proc.stdout, "failed")
            assert failed == {"type": "failed", "job": "bad",
                              "reason": "at least 2 classes must have labelled pixels; only 'STO' has"}
            (unknown,) = _replies(proc.stdout, "failed")
            assert unknown["job"] is None and "unknown op 'fly'" in unknown["reason"]
            frames = _replies(proc.stdout, "done")
            *progress, done = frames
            assert progress and all(p["type"] == "progress" and p["job"] == "good" for p in progress)
            assert [p["epoch"] for p in progress] == list(range(1, len(progress) + 1))
            assert all({"epochs", "loss", "val_accuracy", "elapsed_s"} <= set(p) for p in progress)
            assert done["type"] == "done" and done["job"] == "good" and os.path.exists(done["path"])
            assert done["metrics"]["val_accuracy"] >= 0.98
            print(f"job done in {done['elapsed_s']:.2f} s")
            assert done["elapsed_s"] < 10.0
            assert open_recognizer(done["path"]).card.training["scan_id"] == "s1"

            proc.stdin.write(pack({"op": "exit"}))
            proc.stdin.flush()
            assert proc.wait(timeout=30) == 0
            assert proc.stdout.read() == b""  # nothing but frames on the pipe
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stdout.close()


def test_stray_output_goes_to_stderr_not_the_pipe(tmp_path):
    """Whatever is printed after the pipe is claimed, from Python or straight to descriptor 1, lands on
    standard error; the pipe carries only frames, and the end of input ends the process with status 0."""
    code = ("import os, sys\n"
            "from scanlens.models.live import worker\n"
            "pipe = worker.claim_stdout()\n"
            "print('stray python print')\n"
            "os.write(1, b'stray bytes on descriptor 1\\n')\n"
            "sys.exit(worker.serve(sys.stdin.buffer, pipe, warm=False))\n")
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = _start(["-c", code], err)
        try:
            proc.stdin.write(pack({"op": "train", "job": "j1", "kind": "spectral"}))
            proc.stdin.write(pack({"op": "train", "job": "j2", "kind": "frame", "image": np.zeros((4, 4), np.float32)}))
            proc.stdin.close()  # end of input: the trainer answers what it read, then ends
            rest = proc.stdout.read()
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    frames = _replies(io.BytesIO(rest))
    assert [f["type"] for f in frames] == ["ready", "failed", "failed"]
    assert "lacks" in frames[1]["reason"] and "'x'" in frames[1]["reason"]
    assert frames[2]["job"] == "j2" and "lacks" in frames[2]["reason"] and "'labels'" in frames[2]["reason"]
    logged = (tmp_path / "stderr.txt").read_text()
    assert "stray python print" in logged and "stray bytes on descriptor 1" in logged
