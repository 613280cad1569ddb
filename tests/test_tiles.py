"""Large frames segmented in overlapping tiles (``FrameRecognizer.segment_scored``, the ``frame_tile_px``
setting; docs/operations.md, "Memory"): the stitching is exact for a model without global statistics,
the shipped stem-unet finds the same atoms and defects tiled as whole, and a frame's novelty is its
most novel tile's. Real ONNX Runtime sessions throughout; the memory the tiles save is measured by
``bench/demo_memory.py``, not here."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanlens.app.config import FRAME_TILE_PX, Settings
from scanlens.model_files import MODEL_DIR
from scanlens.models.scoring.stem import match_points, simulated_frame
from scanlens.pipeline import DEFAULT_TILE_PX, FrameRecognizer, OnnxModel, open_recognizer, tile_bounds
from scanlens.protocol.model_card import CARD_KEY, InputSpec, ModelCard, NoveltySpec, OutputSpec
from scanlens.protocol.messages import PixelSize
from scanlens.testing import write_frame_model


def test_tile_bounds_cover_the_side_in_parts_on_the_networks_grid():
    for size, tile, m in [(1024, 512, 16), (1040, 512, 16), (2048, 512, 16), (304, 128, 8), (4096, 640, 16)]:
        b = tile_bounds(size, tile, m)
        assert b[0] == 0 and b[-1] == size
        assert len(b) - 1 == -(-size // tile)  # ceil(size / tile) parts
        assert all(x % m == 0 for x in b)
        parts = np.diff(b)
        assert parts.min() > 0 and parts.max() <= tile + m
    assert tile_bounds(512, 512, 16) == [0, 512]  # one tile: the frame as it is
    assert tile_bounds(1024, 0, 16) == [0, 1024]  # 0: whole frames


def test_the_setting_defaults_to_the_pipelines_tile_and_refuses_tiny_tiles():
    assert Settings().frame_tile_px == FRAME_TILE_PX == DEFAULT_TILE_PX
    assert Settings(frame_tile_px=0).frame_tile_px == 0
    with pytest.raises(ValueError, match="0 .whole frames. or at least 128"):
        Settings(frame_tile_px=64)


def test_a_pointwise_models_tiles_stitch_to_exactly_the_whole_frame(tmp_path):
    """frame-test is pointwise, so any error in where a tile's kept part goes shows as a difference."""
    path = write_frame_model(tmp_path / "frame-test.onnx")
    whole = open_recognizer(path, threads=1, tile_px=0)
    tiled = open_recognizer(path, threads=1, tile_px=128)
    rng = np.random.default_rng(3)
    for shape in [(300, 260), (520, 129), (128, 700), (97, 97)]:
        image = rng.random(shape, dtype=np.float32) * 3
        a, b = whole.segment(image), tiled.segment(image)
        assert a.shape == b.shape == (3, *shape)
        np.testing.assert_array_equal(a, b)


def _novelty_model(path):
    """A frame model whose novelty is the mean of its input: what each tile reports is known."""
    nodes = [helper.make_node("Sigmoid", ["image"], ["s"]),
             helper.make_node("Sub", ["one", "s"], ["t"]),
             helper.make_node("Concat", ["t", "s"], ["probabilities"], axis=1),
             helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0)]
    nodes.append(helper.make_node("Identity", ["m"], ["novelty"]))
    graph = helper.make_graph(
        nodes, "novelty-test", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2, "h", "w"]),
         helper.make_tensor_value_info("novelty", TensorProto.FLOAT, ["n"])],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        name="novelty-test", version="test", modality="haadf", description="test", architecture="pointwise",
        input=InputSpec(name="image", pixel_size=PixelSize(size=0.02, units="nm"), normalization="none"),
        outputs=[OutputSpec(name="probabilities", role="segmentation", labels=["background", "atom"]),
                 OutputSpec(name="novelty", role="novelty", labels=["novelty"])],
        novelty=NoveltySpec(output="novelty", threshold=0.5, method="the mean of the frame"),
        postprocess={"atom_classes": ["atom"], "defect_classes": [], "size_multiple": 8, "tile_margin_px": 8})
    helper.set_model_props(model, {CARD_KEY: card.model_dump_json()})
    onnx.save(model, str(path))
    return path


def test_a_tiled_frames_novelty_is_its_most_novel_tiles(tmp_path):
    rec = FrameRecognizer(OnnxModel.open(_novelty_model(tmp_path / "n.onnx"), threads=1), tile_px=128)
    assert rec.tile_margin == 8
    image = np.zeros((256, 256), np.float32)
    image[200:, 200:] = 1.0  # one corner of the frame is unlike the rest
    _, novelty = rec.segment_scored(image)
    # tiles are the kept quarters [0, 128) and [128, 256) on each side, with 8 px of context
    corner = image[120:, 120:]
    assert novelty == pytest.approx(float(corner.mean()), rel=1e-6)
    assert novelty > float(image.mean())  # the whole frame's score would hide the corner
    _, whole = FrameRecognizer(OnnxModel.open(tmp_path / "n.onnx", threads=1), tile_px=0).segment_scored(image)
    assert whole == pytest.approx(float(image.mean()), rel=1e-6)


@pytest.fixture(scope="module")
def frame_1024():
    image, truth, _ = simulated_frame(11, size=1024)
    return image.astype(np.float32), truth


def test_stem_unet_finds_the_same_atoms_and_defects_tiled_as_whole(frame_1024):
    """The shipped model normalises each tile by its own statistics, so probabilities differ a little;
    what it reports must not. Measured: 99.997 % of the class map equal, max |dp| 0.005 (seed 3)."""
    image, truth = frame_1024
    path = MODEL_DIR / "stem-unet.onnx"
    whole = open_recognizer(path, threads=1, tile_px=0)
    tiled = open_recognizer(path, threads=1)  # the default: 512, so 2 x 2 tiles of 576 px
    assert tiled.tile_px == DEFAULT_TILE_PX
    p_whole, n_whole = whole.segment_scored(image)
    p_tiled, n_tiled = tiled.segment_scored(image)
    assert np.mean(p_whole.argmax(0) == p_tiled.argmax(0)) > 0.9995
    assert np.abs(p_whole - p_tiled).max() < 0.05
    c_w, atoms_w, defects_w = whole.recognize(image, 1.0)
    c_t, atoms_t, defects_t = tiled.recognize(image, 1.0)
    tp, fp, fn, _ = match_points(atoms_t, atoms_w, 0.5)
    assert len(atoms_w) > 1000 and fp + fn <= 0.001 * len(atoms_w)
    tp, fp, fn, pairs = match_points(defects_t, defects_w, 1.0)
    assert len(defects_w) >= 10 and fp == fn == 0
    assert np.array_equal(defects_t[pairs[:, 0], 2], defects_w[pairs[:, 1], 2])  # same defect classes
    # the tiles run on a session of their own, all cores at once (on one core: the recognizer's own)
    assert tiled._tiles is not None or len(os.sched_getaffinity(0)) == 1
    # the frame is in distribution either way, and the most novel tile is near the whole frame's score
    threshold = tiled.novelty_threshold
    assert n_whole < threshold and n_tiled < threshold
    assert n_whole * 0.8 < n_tiled < n_whole * 1.25
