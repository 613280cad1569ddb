"""Live training of a frame recognizer (``models.live.frames``): stem-unet fine-tuned on ONE labelled frame of a
graphene movie, within the trainer's budget, then served by the service's own ``FrameRecognizer`` on the
frames that follow, scored against the simulator's ground truth.

The shipped stem-unet (WS2) finds almost none of graphene's atoms; the live model, trained in a 30 s budget,
finds them on every following frame. Timings on 2 shared CPU cores (one torch thread, as in
tests/test_one_frame.py: no OpenMP spin-waits against the other tests' processes): each training ~20-30 s
(budget 30 s, export included), the bad-input checks a fraction of a second each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanlens.model_files import MODEL_DIR
from scanlens.models.export import read_card
from scanlens.models.scoring import MATCH_FRACTION, atom_scores, recognize_frame
from scanlens.pipeline import FrameRecognizer, open_recognizer
from scanlens.sim.stem import (
    ATOM_CLASSES,
    SEG_CLASSES,
    STEMConfig,
    STEMMovie,
    merge_sublattices,
    nearest_neighbour_spacing_px,
)

#: 30 s, not 20: on a machine loaded by the rest of the suite a step takes longer and the planner refuses budgets
#: below ~14-17 s (a fresh-clone run once errored here); the model is the same, only the margin grows
BUDGET_S = 30.0
#: the movie of the main test: graphene, 256 px at the simulator's 0.02 nm, 4 defects that walk
MOVIE = STEMConfig(lattice="graphene", size=256, frames=11, n_defects=4, seed=3)
LATER = range(1, 11)


def _merged_atoms(atoms: np.ndarray) -> np.ndarray:
    """Truth atoms with graphene's B sublattice (``chalcogen``) merged into the A (``metal``), as in the labels."""
    out = atoms.copy()
    out[out[:, 2] == ATOM_CLASSES.index("chalcogen"), 2] = ATOM_CLASSES.index("metal")
    return out


def _f1(rec: Any, movie: STEMMovie, frames: range, scale: float = 1.0) -> list[float]:
    """Atom F1 of ``rec`` on these frames of the movie, run as the service runs a frame (rescale to the card's
    pixel size, segment, post-process with the card's parameters, scale back)."""
    radius = MATCH_FRACTION * nearest_neighbour_spacing_px(movie.cfg)
    out = []
    for i in frames:
        atoms, _ = recognize_frame(rec, movie.frame(i) * np.float32(scale), movie.cfg.pixel_size_nm)
        out.append(atom_scores(atoms, _merged_atoms(movie.truth(i)["atoms"]), radius)["f1"])
    return out


@pytest.fixture(scope="module")
def graphene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Frame 0 of the movie, every pixel labelled from its ground truth, fine-tuned from stem-unet in at most BUDGET_S."""
    pytest.importorskip("torch")
    from scanlens.models.live.frames import train_frame

    movie = STEMMovie(MOVIE)
    labels = merge_sublattices(movie.truth(0)["labels"]) + 1  # 0 is "unlabelled"; k is classes[k - 1]
    path = tmp_path_factory.mktemp("live-frames") / "graphene-live.onnx"
    events: list[dict[str, Any]] = []
    metrics = train_frame(movie.frame(0), labels.astype(np.uint8), classes=list(SEG_CLASSES),
                          pixel_size={"size": MOVIE.pixel_size_nm, "units": "nm"}, name="graphene-live",
                          modality="haadf", out_path=str(path), budget_s=BUDGET_S, seed=0,
                          provenance={"live": True, "scan_id": "graphene", "frame": 0, "revision": 1},
                          progress=events.append, threads=1)
    return {"movie": movie, "path": path, "metrics": metrics, "events": events, "labels": labels}


def test_the_live_model_finds_the_atoms_of_the_following_frames(graphene: dict[str, Any]) -> None:
    movie, metrics = graphene["movie"], graphene["metrics"]
    rec = open_recognizer(graphene["path"], threads=2)
    assert isinstance(rec, FrameRecognizer)
    live = _f1(rec, movie, LATER)
    shipped = _f1(open_recognizer(MODEL_DIR / "stem-unet.onnx", threads=2), movie, LATER)
    summary = {"live_f1": np.round(live, 4).tolist(), "shipped_f1": np.round(shipped, 4).tolist(),
               "steps": metrics["steps"], "seconds": round(metrics["seconds"], 1)}
    print(summary)
    assert np.mean(live) >= 0.98 and min(live) >= 0.95, summary
    assert max(shipped) <= 0.5, summary  # stem-unet knows WS2 only
    assert metrics["training_frame_atom_f1"] >= 0.98 and metrics["onnx_max_abs_diff"] < 1e-4
    # within the budget (a busy machine may stretch the export a little past its share)
    assert metrics["seconds"] <= 1.25 * BUDGET_S, summary
    # the following frames are not novel to it; a WS2 frame and a blank one are
    scores = [rec.segment_scored(movie.frame(i))[1] for i in LATER]
    assert max(scores) <= rec.novelty_threshold, scores
    ws2 = STEMMovie(STEMConfig(size=256, frames=1, n_defects=2, seed=1)).frame(0)
    blank = np.random.default_rng(0).poisson(40.0, (256, 256)).astype(np.float32)
    for other in (ws2, blank):
        assert rec.segment_scored(other)[1] > rec.novelty_threshold


def test_its_card_is_a_frame_models_card_with_the_live_provenance(graphene: dict[str, Any]) -> None:
    card = read_card(graphene["path"])
    shipped = read_card(MODEL_DIR / "stem-unet.onnx")
    assert (card.name, card.modality) == ("graphene-live", "haadf")
    assert "trained live on frame 0 of scan graphene" in card.description
    assert card.input.name == shipped.input.name and card.input.normalization == shipped.input.normalization
    px = card.input.pixel_size
    assert px is not None and (px.size, px.units) == (0.02, "nm")
    assert [(o.name, o.role, o.labels) for o in card.outputs] == [(o.name, o.role, o.labels) for o in shipped.outputs]
    assert card.novelty is not None and card.novelty.output == "novelty" and card.novelty.threshold > 0
    # the post-processing of stem-unet's card, tuned to graphene's lattice (nn 7.1 px; WS2's 9.1)
    assert set(card.postprocess) == set(shipped.postprocess)
    nn = nearest_neighbour_spacing_px(MOVIE)
    assert card.postprocess["min_distance_px"] == pytest.approx(0.6 * nn, rel=0.03)
    assert card.postprocess["track_gate_nm"] == pytest.approx(4 * 0.246, rel=0.03)  # four lattice constants
    tr = card.training
    assert (tr["live"], tr["scan_id"], tr["frame"], tr["revision"]) == (True, "graphene", 0, 1)
    assert tr["base"].endswith("stem-unet.onnx") and tr["base_not_used"] is None
    assert tr["classes"] == list(SEG_CLASSES)
    labels = graphene["labels"]
    assert tr["labelled_pixels"] == {c: int(np.sum(labels == k + 1)) for k, c in enumerate(SEG_CLASSES)}
    assert tr["source"]["nn_spacing_px"] == pytest.approx(nn, rel=0.03) and tr["source"]["labelled_fraction"] == 1.0
    assert tr["steps"] == graphene["metrics"]["steps"] >= 10 and 0 < tr["seconds_before_export"] <= tr["budget_s"]
    assert tr["stopped"] in ("planned steps", "budget") and tr["validation"].endswith("soft target)")
    wanted = {"training_frame_atom_f1", "final_train_loss", "val_accuracy", "steps", "novelty_threshold"}
    assert wanted <= set(card.metrics)
    assert all(math.isfinite(v) for v in card.metrics.values())
    # progress: every few steps, the planned total, a loss and the held-out pixels' accuracy
    events = graphene["events"]
    assert len(events) >= 4 and all(set(e) == {"epoch", "epochs", "loss", "val_accuracy"} for e in events)
    assert [e["epoch"] for e in events] == sorted({e["epoch"] for e in events})
    assert events[-1]["epoch"] == tr["steps"] and all(math.isfinite(e["loss"]) for e in events)
    assert all(0.0 <= e["val_accuracy"] <= 1.0 for e in events) and events[-1]["val_accuracy"] >= 0.9


def test_partly_labelled_frame_in_fractions_of_the_beam(tmp_path: Path) -> None:
    """The operator labels the left half of a frame (the rest 0, unlabelled) and the instrument sends fractions
    of the beam, not counts; the pixel size comes in pm. The model still finds the atoms of the following
    frames, sent in the same units, over the whole frame."""
    pytest.importorskip("torch")
    from scanlens.models.live.frames import train_frame

    cfg = STEMConfig(lattice="graphene", size=192, frames=6, n_defects=2, seed=8)
    movie = STEMMovie(cfg)
    scale = 1.0 / (cfg.dose * 37.0)
    full = merge_sublattices(movie.truth(0)["labels"])
    classes = ["metal", "background", "metal_vacancy", "dopant", "adatom"]  # any order, a subset
    labels = np.zeros_like(full)
    for k, c in enumerate(classes):
        labels[full == SEG_CLASSES.index(c)] = k + 1
    labels[:, 96:] = 0
    path = tmp_path / "half.onnx"
    metrics = train_frame(movie.frame(0) * np.float32(scale), labels, classes=classes,
                          pixel_size={"size": 20.0, "units": "pm"}, name="half", modality="haadf", out_path=str(path),
                          budget_s=BUDGET_S, threads=1)
    card = read_card(path)
    assert card.input.pixel_size is not None and card.input.pixel_size.size == pytest.approx(0.02)
    assert card.training["source"]["counts"] is False and card.training["source"]["labelled_fraction"] == 0.5
    assert "on a labelled pixel" in card.training["augmentation"]
    assert card.training["labelled_pixels"]["background"] == int(np.sum(labels == 2))
    f1 = _f1(open_recognizer(path, threads=2), movie, range(1, 6), scale)
    print({"f1": np.round(f1, 4).tolist(), "steps": metrics["steps"], "seconds": round(metrics["seconds"], 1)})
    assert np.mean(f1) >= 0.97 and min(f1) >= 0.95, f1


def test_a_base_that_is_not_a_frame_unet_falls_back_to_training_from_scratch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from scanlens.models.live.frames import BaseMismatch, load_base, train_frame

    with pytest.raises(BaseMismatch, match="not a STEMUNet export"):
        load_base(MODEL_DIR / "eels-mlp.onnx")
    with pytest.raises(BaseMismatch, match="cannot read"):
        load_base(tmp_path / "missing.onnx")
    # stem-unet's initializers give back its network: ONNX Runtime agrees on a frame
    load_base(MODEL_DIR / "stem-unet.onnx", STEMMovie(STEMConfig(size=64, frames=1, n_defects=0)).frame(0))

    cfg = STEMConfig(lattice="graphene", size=64, frames=2, n_defects=0, seed=4)
    movie = STEMMovie(cfg)
    labels = merge_sublattices(movie.truth(0)["labels"]) + 1
    path = tmp_path / "scratch.onnx"
    metrics = train_frame(movie.frame(0), labels, classes=list(SEG_CLASSES), pixel_size={"size": 0.02, "units": "nm"},
                          name="scratch", modality="haadf", out_path=str(path), budget_s=25.0,
                          base=str(MODEL_DIR / "eels-mlp.onnx"), threads=1)
    card = read_card(path)
    assert card.training["base"] is None and "not a STEMUNet export" in card.training["base_not_used"]
    assert "trained from scratch" in card.description and card.training["steps"] >= 30
    assert metrics["onnx_max_abs_diff"] < 1e-4
    rec = open_recognizer(path, threads=1)
    assert rec.segment(movie.frame(1)).shape == (len(SEG_CLASSES), 64, 64)


def _bad_args(**change: Any) -> dict[str, Any]:
    movie = STEMMovie(STEMConfig(lattice="graphene", size=64, frames=1, n_defects=0, seed=2))
    args: dict[str, Any] = {
        "image": movie.frame(0), "labels": merge_sublattices(movie.truth(0)["labels"]) + 1,
        "classes": list(SEG_CLASSES), "pixel_size": {"size": 0.02, "units": "nm"}, "name": "bad",
        "modality": "haadf", "budget_s": 20.0,
    }
    args.update(change)
    return args


@pytest.mark.parametrize("change,message", [
    ({"labels": np.ones((64, 80), np.uint8)}, "the image's shape"),
    ({"image": np.zeros((2, 64, 64), np.float32)}, "2-D frame"),
    ({"image": np.ones((48, 48), np.float32), "labels": np.ones((48, 48), np.uint8)}, "at least 64 x 64"),
    ({"image": np.full((64, 64), np.inf, np.float32)}, "NaN or infinite"),
    ({"labels": np.zeros((64, 64), np.uint8)}, "no pixel is labelled"),
    ({"labels": np.full((64, 64), 2, np.uint8)}, r"one class only \(metal\)"),
    ({"labels": np.full((64, 64), 8, np.uint8)}, "0 \\(unlabelled\\) or 1..7"),
    ({"labels": np.full((64, 64), 0.5)}, "integer class indices"),
    ({"classes": ["background", "carbon"]}, "unknown class names \\['carbon'\\].*background, metal, chalcogen"),
    ({"classes": ["background", "background"]}, "must not repeat"),
    ({"classes": "background"}, "non-empty list"),
    ({"labels": np.where(np.arange(64) < 32, 1, 2).astype(np.uint8)[None].repeat(64, 0)}, "at least two atom columns"),
    ({"pixel_size": {"size": 0.0, "units": "nm"}}, "finite number > 0"),
    ({"pixel_size": {"size": 0.02, "units": "s"}}, "must be a length"),
    ({"pixel_size": 0.02}, "pixel_size must be"),
    ({"name": "no spaces please"}, "name must be"),
    ({"modality": ""}, "modality must be"),
    ({"budget_s": 3.0}, "budget_s=3 is too small"),
    ({"budget_s": float("nan")}, "budget_s must be"),
])
def test_bad_inputs_are_clear_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    pytest.importorskip("torch")
    from scanlens.models.live.frames import train_frame

    out = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match=message):
        train_frame(out_path=str(out), **_bad_args(**change))
    assert not out.exists()
