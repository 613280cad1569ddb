"""Train on one frame, apply to the movie: ``models.one_frame``, ``scanlens sim stem-frame`` and
``scanlens train one-frame``, and a graphene movie recognized through the real service by a model
trained on its first frame only, against the shipped WS2 model on the same frames.

Timings on 2 CPU cores: the graphene test trains the default 150 steps on one torch thread in ~55 s
(~31 s on two) and streams 11 frames through the service in ~1 s; the quick tests train a few steps each
(~8-11 s with the ONNX export).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from scanlens.sim.stem import (
    ATOM_CLASSES,
    DEFECT_CLASSES,
    SEG_CLASSES,
    STEMConfig,
    STEMMovie,
    STEMSource,
    merge_sublattices,
    nearest_neighbour_spacing_px,
)
from scanlens.sim.stream import stream_movie
from scanlens.model_files import MODEL_DIR
from scanlens.models.export import read_card
from scanlens.models.scoring import MATCH_FRACTION, atom_scores, defect_accuracy, evaluate_frame, match_points
from scanlens.app.cli import app
from scanlens.app.config import Settings
from scanlens.pipeline import FrameRecognizer
from scanlens.pipeline import open_recognizer

from scanlens.testing import live, run_cli

SCANLENS = ("-c", "from scanlens.app.cli import main; main()")
runner = CliRunner()


def _frame(**kw: Any) -> tuple[np.ndarray, np.ndarray, STEMConfig]:
    cfg = STEMConfig(frames=1, **kw)
    movie = STEMMovie(cfg)
    return movie.frame(0), movie.truth(0)["labels"], cfg


# --------------------------------------------------------------------------- quick budget


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A few steps on a small WS2 frame at 0.025 nm/px (not the shipped model's 0.02)."""
    pytest.importorskip("torch")
    from scanlens.models.one_frame import train_one_frame

    image, labels, cfg = _frame(size=96, pixel_size_nm=0.025, n_defects=1, seed=21)
    path = tmp_path_factory.mktemp("one-frame") / "quick.onnx"
    events: list[Any] = []
    metrics = train_one_frame(image, labels, cfg.pixel_size_nm, path, name="quick-frame", steps=3, seed=4,
                              progress=events.append, threads=1)
    return {"path": path, "metrics": metrics, "events": events, "cfg": cfg, "image": image}


def test_quick_training_writes_a_recognizer_with_its_card(quick: dict[str, Any]) -> None:
    rec = open_recognizer(quick["path"], threads=1)
    assert isinstance(rec, FrameRecognizer)
    card = rec.card
    assert card == read_card(quick["path"])
    assert (card.name, card.modality) == ("quick-frame", "haadf")
    assert card.input.name == "image" and card.input.pixel_size is not None
    assert (card.input.pixel_size.size, card.input.pixel_size.units) == (0.025, "nm")
    assert "scale" in card.input.normalization and "one labelled 96 x 96 frame" in card.description
    (out,) = card.outputs
    assert (out.name, out.role, out.labels) == ("probabilities", "segmentation", list(SEG_CLASSES))
    # post-processing scaled to this frame's lattice: 0.6 x the nn spacing measured in the labels
    nn = nearest_neighbour_spacing_px(quick["cfg"])  # 7.30 px (WS2 at 0.025 nm/px; stem-unet: 9.12 px)
    pp = card.postprocess
    assert pp["atom_classes"] == list(ATOM_CLASSES) and pp["defect_classes"] == list(DEFECT_CLASSES)
    assert pp["min_distance_px"] == pytest.approx(0.6 * nn, rel=0.03)
    assert pp["size_multiple"] == 16 and pp["threshold"] == 0.5 and 2 <= pp["min_region_px"] < 8
    assert pp["track_gate_nm"] == pytest.approx(4 * 0.316, rel=0.03)  # four lattice constants of WS2
    src = card.training["source"]
    assert src["image_shape"] == [96, 96] and src["pixel_size_nm"] == 0.025 and src["counts"] is True
    assert src["nn_spacing_px"] == pytest.approx(nn, rel=0.03)
    assert card.training["steps"] == 3 and card.training["seed"] == 4 and card.training["wall_seconds"] > 0
    assert set(card.metrics) == {"final_train_loss", "training_frame_atom_f1", "training_frame_atom_precision",
                                 "training_frame_atom_recall", "training_frame_atom_class_accuracy"}
    assert all(math.isfinite(v) for v in card.metrics.values())
    assert quick["metrics"]["onnx_max_abs_diff"] < 1e-4
    stages = [e.stage for e in quick["events"]]
    assert stages[0] == "data" and stages[-1] == "export" and "train" in stages
    train = [e for e in quick["events"] if e.stage == "train"]
    assert train[-1].step == train[-1].total == 3 and all(math.isfinite(e.loss) for e in train)
    # the recognizer segments a frame that is not a multiple of 16
    probs = rec.segment(quick["image"][:90, :77])
    assert probs.shape == (len(SEG_CLASSES), 90, 77) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def _bad(**change: Any) -> dict[str, Any]:
    image, labels, _ = _frame(size=64, n_defects=0, seed=2)
    args: dict[str, Any] = {"image": image, "labels": labels, "pixel_size_nm": 0.02}
    args.update(change)
    return args


@pytest.mark.parametrize("change,message", [
    ({"image": np.zeros((2, 64, 64), np.float32)}, "2-D frame"),
    ({"labels": np.zeros((64, 80), np.uint8)}, "the image's shape"),
    ({"image": np.zeros((48, 48), np.float32), "labels": np.zeros((48, 48), np.uint8)}, "at least 64 x 64"),
    ({"image": np.full((64, 64), np.nan, np.float32)}, "NaN or infinite"),
    ({"labels": np.full((64, 64), 7, np.uint8)}, "0..6"),
    ({"labels": np.full((64, 64), -1, np.int16)}, "0..6"),
    ({"labels": np.full((64, 64), 0.5)}, "integer class indices"),
    ({"pixel_size_nm": 0.0}, "pixel_size_nm must be a finite number > 0"),
    ({"pixel_size_nm": float("inf")}, "pixel_size_nm must be a finite number > 0"),
    ({"labels": np.zeros((64, 64), np.uint8)}, "at least two atom columns"),
    ({"name": "no spaces please"}, "name must be"),
    ({"steps": 0}, "steps must be >= 1"),
])
def test_bad_inputs_are_clear_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    pytest.importorskip("torch")
    from scanlens.models.one_frame import train_one_frame

    args = _bad(**change)
    with pytest.raises(ValueError, match=message):
        train_one_frame(out_path=tmp_path / "bad.onnx", **args)
    assert not (tmp_path / "bad.onnx").exists()


def test_crops_keep_image_and_labels_aligned_and_add_fresh_noise() -> None:
    pytest.importorskip("torch")
    from scanlens.models import one_frame

    image, labels, _ = _frame(size=160, n_defects=2, seed=5, dose=100.0)
    labels, _ = one_frame.drop_outside_columns(labels)
    blobs = one_frame.blob_centres(labels)
    frame = one_frame.TrainingFrame(image=image, labels=labels, distance=one_frame.distance_map(blobs),
                                    counts=True, crop=128, centres=blobs,
                                    defect_pixels=np.argwhere(np.isin(labels, (3, 4, 5, 6))))
    rng = np.random.default_rng(0)
    seen_thinned = False
    for k in range(24):
        valid = (120, 113) if k % 3 == 0 else None
        img, lab, dist = one_frame.sample_crop(frame, rng, valid)
        assert img.shape == lab.shape == dist.shape == (128, 128)
        inside = lab != one_frame.IGNORE
        assert inside.sum() == (120 * 113 if valid else 128 * 128)
        # after any flip/rotation the labelled W columns are still where the image is bright
        metal = lab == SEG_CLASSES.index("metal")
        assert img[metal].mean() > 3 * img[inside & (lab == 0)].mean()
        assert np.all(np.isfinite(dist[lab == 1])) and np.all(np.isinf(dist[inside & (lab == 0)]))
        seen_thinned |= bool(img.sum() < 0.75 * image.mean() * img.size)
    assert seen_thinned, "some crops are thinned to a lower dose"
    # same generator state, same crop
    a = one_frame.sample_crop(frame, np.random.default_rng(3))
    b = one_frame.sample_crop(frame, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- command line


def test_help_explains_both_commands() -> None:
    result = runner.invoke(app, ["train", "one-frame", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for words in ("ONE labelled HAADF frame", "--image", "--labels", "--pixel-size-nm", "--steps", "--quick",
                  "0 background", "--recognizer"):
        assert words in text, words
    result = runner.invoke(app, ["sim", "stem-frame", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "scanlens train one-frame" in text and "--out-labels" in text and "graphene" in text


def test_help_states_the_module_defaults() -> None:
    pytest.importorskip("torch")
    from scanlens.models import cli, one_frame

    assert (cli._ONE_FRAME_NAME, cli._ONE_FRAME_STEPS, cli._ONE_FRAME_QUICK) == (
        one_frame.NAME, one_frame.STEPS, one_frame.QUICK_STEPS)


@pytest.mark.timeout(240)
async def test_cli_simulates_a_frame_and_trains_a_model_on_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    image_path, labels_path, out = tmp_path / "frame.npy", tmp_path / "labels.npy", tmp_path / "m" / "g.onnx"
    printed = await run_cli(*SCANLENS, "sim", "stem-frame", "--out-image", str(image_path), "--out-labels",
                            str(labels_path), "--frame", "2", "--size", "96", "--lattice", "graphene", "--seed", "8",
                            "--defects", "1", "--dose", "150")
    report = json.loads(printed)
    assert report["shape"] == [96, 96] and report["sublattices_merged"] is True
    cfg = STEMConfig(size=96, frames=40, lattice="graphene", seed=8, n_defects=1, dose=150.0)
    movie = STEMMovie(cfg)  # the movie `scanlens sim stem` would stream, however many frames it has
    np.testing.assert_array_equal(np.load(image_path), movie.frame(2))
    labels = np.load(labels_path)
    np.testing.assert_array_equal(labels, merge_sublattices(movie.truth(2)["labels"]))
    assert labels.dtype == np.uint8 and not np.isin(labels, (2, 4)).any()

    printed = await run_cli(*SCANLENS, "train", "one-frame", "--image", str(image_path), "--labels",
                            str(labels_path), "--pixel-size-nm", "0.02", "--out", str(out), "--name", "cli-frame",
                            "--quick", "--seed", "1", timeout=200)
    text = " ".join(printed.split())
    assert "wrote" in text and out.is_file()
    assert "training_frame_atom_f1" in text and "--recognizer cli-frame" in text
    card = read_card(out)
    assert card.name == "cli-frame" and card.training["seed"] == 1
    assert card.input.pixel_size is not None and card.input.pixel_size.size == 0.02


async def test_cli_refuses_bad_labels_clearly(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    image, labels, _ = _frame(size=64, n_defects=0, seed=2)
    np.save(tmp_path / "frame.npy", image)
    np.save(tmp_path / "labels.npy", labels[:, :60])
    result = runner.invoke(app, ["train", "one-frame", "--image", str(tmp_path / "frame.npy"), "--labels",
                                 str(tmp_path / "labels.npy"), "--pixel-size-nm", "0.02", "--out",
                                 str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "the image's shape" in result.output
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- the real thing: a graphene movie


def _merged_atoms(atoms: np.ndarray) -> np.ndarray:
    """Truth atoms with the B sublattice (``chalcogen``) merged into the A (``metal``), as in the labels."""
    out = atoms.copy()
    out[out[:, 2] == ATOM_CLASSES.index("chalcogen"), 2] = ATOM_CLASSES.index("metal")
    return out


def _merged_defects(defects: np.ndarray) -> np.ndarray:
    out = defects.copy()
    out[out[:, 2] == DEFECT_CLASSES.index("chalcogen_vacancy"), 2] = DEFECT_CLASSES.index("metal_vacancy")
    return out


@pytest.mark.timeout(300)
async def test_trained_on_frame_0_it_recognizes_the_rest_of_a_graphene_movie(tmp_path: Path) -> None:
    """The shipped stem-unet knows only WS2 and finds no atoms in graphene (measured: F1 ~0, it labels every
    pixel background). Train on frame 0 of a graphene movie, then stream the movie through the service with
    both models: on frames 1-10 (defects moved, lattice drifted) the one-frame model finds the atoms and
    defects, the shipped one does not."""
    pytest.importorskip("torch")
    from scanlens.models.one_frame import STEPS, train_one_frame

    cfg = STEMConfig(lattice="graphene", size=256, frames=11, n_defects=4, seed=3)
    movie = STEMMovie(cfg)
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copy(MODEL_DIR / "stem-unet.onnx", model_dir / "stem-unet.onnx")
    t0 = time.perf_counter()
    metrics = train_one_frame(movie.frame(0), merge_sublattices(movie.truth(0)["labels"]), cfg.pixel_size_nm,
                              model_dir / "graphene-unet.onnx", name="graphene-unet", steps=STEPS, seed=0,
                              threads=1)  # one torch thread, as tests/test_stem_unet.py: no OpenMP spin-waits
    train_s = time.perf_counter() - t0
    assert metrics["training_frame_atom_f1"] >= 0.98, metrics

    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=model_dir, inference_threads=1, status_interval_s=0.05, scan_timeout_s=60)
    t1 = time.perf_counter()
    async with live(settings, scan_id="graphene") as (_, inst, sub):
        await stream_movie(inst, STEMSource(cfg), "graphene", recognizers=["graphene-unet", "stem-unet"])
        result = await sub.collect_movie("graphene", timeout=60, keep_classes=False)
    stream_s = time.perf_counter() - t1
    assert result.summary is not None and result.summary.state == "complete"
    assert result.summary.recognizers["graphene-unet"].frames_recognized == 11

    radius = MATCH_FRACTION * nearest_neighbour_spacing_px(cfg)  # 0.3 x 7.1 px
    later = range(1, 11)
    scores: dict[str, list[dict[str, float]]] = {"graphene-unet": [], "stem-unet": []}
    defects = []
    for i in later:
        truth = movie.truth(i)
        for name in scores:
            scores[name].append(atom_scores(result.frames[name][i]["atoms"], _merged_atoms(truth["atoms"]), radius))
        defects.append(defect_accuracy(result.frames["graphene-unet"][i]["defects"][:, :4],
                                       _merged_defects(truth["defects"]), radius))
    f1 = {name: [s["f1"] for s in per] for name, per in scores.items()}
    summary = {"train_s": round(train_s, 1), "stream_s": round(stream_s, 1), **metrics,
               "one_frame_f1": np.round(f1["graphene-unet"], 4).tolist(),
               "shipped_f1": np.round(f1["stem-unet"], 4).tolist()}
    print(summary)
    assert min(f1["graphene-unet"]) >= 0.95, summary
    assert np.mean(f1["graphene-unet"]) >= 0.98, summary
    assert min(s["class_accuracy"] for s in scores["graphene-unet"]) >= 0.98, summary
    assert max(f1["stem-unet"]) <= 0.5, summary  # the shipped model: clearly worse, on the same frames
    assert np.mean(f1["graphene-unet"]) - np.mean(f1["stem-unet"]) >= 0.5, summary
    # the shipped model scores the same offline (scanlens.models.scoring, as the service runs it)
    offline = evaluate_frame(MODEL_DIR / "stem-unet.onnx", movie.frame(1), movie.truth(1), cfg)
    assert offline["atom_f1"] == pytest.approx(f1["stem-unet"][0], abs=1e-9)
    # moved defects are found where they now are, with their class
    tp = sum(d["n_matched"] for d in defects)
    assert tp / sum(d["n_true"] for d in defects) >= 0.9 and tp / max(sum(d["n_found"] for d in defects), 1) >= 0.9
    assert np.nanmean([d["accuracy"] for d in defects]) >= 0.9, defects
    # ... and the later frames are not the training frame again: defects moved, the lattice drifted
    moved = np.linalg.norm(movie.truth(10)["defects"][:, :2] - movie.truth(0)["defects"][:, :2], axis=1)
    assert moved.max() > 3 * radius
    assert match_points(movie.truth(10)["atoms"], movie.truth(0)["atoms"], radius)[0] < 0.5 * len(movie.truth(0)["atoms"])
