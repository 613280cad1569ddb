"""stem-unet says when it cannot vouch for a frame, and does not care in what unit a frame comes (issue 11).

Through the real service (real sockets on loopback, the committed ONNX file): a held-out movie of the
STEM simulator has at most 2 % of its frames flagged novel; graphene, flat noise and WS2 with inverted
contrast (``scanlens.sim.foreign_frames``, drawn here with another seed than the card's figures) are
flagged on at least 95 % of their frames, with the ``mostly_foreign`` event and the summary's
``novel_fraction``; one frame sent at intensity scales from 1e-4 to 1e4 (counts, fractions of the
beam, gain-scaled counts) gives the same atoms, F1 >= 0.98 against each other.
"""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.model_files import MODEL_DIR
from scanlens.models.export import read_card
from scanlens.models.scoring import MATCH_FRACTION, atom_f1
from scanlens.protocol.messages import Event, Frame, FrameResult, PixelSize, ScanEnd, ScanStart, ScanSummary
from scanlens.sim.foreign_frames import foreign_frames
from scanlens.sim.stem import STEMConfig, STEMMovie, nearest_neighbour_spacing_px
from scanlens.testing import connected, loopback_settings, serving

from .model_checks import foreign_events

NAME = "stem-unet"

PIXEL = PixelSize(size=STEMConfig().pixel_size_nm, units="nm")
MOVIE_SEED = 4321  # not a training (>= 1000 are frame seeds), held-out or tuning seed of the card
FOREIGN_SEED = 77


async def _movie(clients, scan_id: str, frames: list[np.ndarray]) -> tuple[list[FrameResult], list, ScanSummary]:
    """Send ``frames`` as one lossless imaging scan (each frame its own shape is not allowed: the first
    frame's shape is the scan's, so frames of one kind are cropped to it); the frame results, the events and
    the summary."""
    inst, sub, _ = clients
    shape = frames[0].shape
    await inst.send(ScanStart(scan_id=scan_id, modality="haadf", shape=shape, frames=len(frames), policy="lossless",
                              pixel_size=PIXEL, recognizers=[NAME]))
    for i, img in enumerate(frames):
        await inst.send(Frame(scan_id=scan_id, seq=i, frame=i, shape=shape, dtype="float32"),
                        [np.ascontiguousarray(img[:shape[0], :shape[1]], np.float32)])
    await inst.send(ScanEnd(scan_id=scan_id, n_messages=len(frames)))
    results, events = [], []
    while True:
        msg = await sub.recv(60)
        h = msg.header
        if getattr(h, "scan_id", None) != scan_id:
            continue
        if isinstance(h, FrameResult):
            results.append(msg)
        elif isinstance(h, Event):
            events.append(h)
        elif isinstance(h, ScanSummary):
            return results, events, h



async def test_stem_unet_flags_foreign_frames_and_not_its_own():
    own = STEMMovie(STEMConfig(size=256, frames=50, seed=MOVIE_SEED))
    async with serving(loopback_settings(MODEL_DIR, models=[NAME])) as server, connected(server) as clients:
        results, events, summary = await _movie(clients, "own", [own.frame(t) for t in range(own.cfg.frames)])
        assert len(results) == 50 and summary.state == "complete"
        novel = np.array([r.header.novel for r in results])
        assert all(np.isfinite(r.header.novelty) for r in results)
        assert novel.mean() <= 0.02, [r.header.novelty for r in results]
        assert summary.recognizers[NAME].novel_fraction == novel.mean()
        assert not foreign_events(events)
        for kind, frames in foreign_frames(20, FOREIGN_SEED).items():
            size = min(f.shape[0] for f in frames)  # one shape per scan: crop every frame to the smallest
            results, events, summary = await _movie(clients, kind, [f[:size, :size] for f in frames])
            flagged = np.mean([r.header.novel for r in results])
            assert flagged >= 0.95, (kind, flagged, [r.header.novelty for r in results])
            assert summary.recognizers[NAME].novel_fraction == flagged
            assert len(foreign_events(events)) == 1, kind  # once per scan


async def test_the_same_atoms_at_any_intensity_scale():
    cfg = STEMConfig(size=256, frames=1, seed=MOVIE_SEED + 1, n_defects=4)
    frame = STEMMovie(cfg).frame(0)
    scales = [10.0**k for k in range(-4, 5)]
    radius = MATCH_FRACTION * nearest_neighbour_spacing_px(cfg)
    async with serving(loopback_settings(MODEL_DIR, models=[NAME])) as server, connected(server) as clients:
        found = {}
        for k, scale in enumerate(scales):
            results, _, summary = await _movie(clients, f"scale-{k}", [frame * np.float32(scale)])
            assert summary.state == "complete" and len(results) == 1, scale
            found[scale] = results[0].arrays["atoms"]
    reference = found[1.0]
    assert len(reference) > 100
    for scale, atoms in found.items():
        assert atom_f1(atoms, reference, radius) >= 0.98, scale


async def test_frame_novelty_does_not_grow_with_the_frame():
    """The deepest features' edge cells see the convolutions' zero padding; they are all but left out of the
    frame statistics, so crops of one movie from 192 to 1024 px (the demo's frames) are all recognised as
    the model's own kind of data."""
    movie = STEMMovie(STEMConfig(size=1024, frames=2, seed=MOVIE_SEED + 2, n_defects=32))
    frames = [movie.frame(t) for t in range(movie.cfg.frames)]
    threshold = read_card(MODEL_DIR / f"{NAME}.onnx").novelty.threshold
    scores = {}
    async with serving(loopback_settings(MODEL_DIR, models=[NAME])) as server, connected(server) as clients:
        for size in (192, 512, 1024):
            results, events, summary = await _movie(clients, f"size-{size}", [f[:size, :size] for f in frames])
            assert summary.state == "complete" and len(results) == len(frames), size
            scores[size] = [r.header.novelty for r in results]
            assert not any(r.header.novel for r in results) and not foreign_events(events), scores
    assert max(max(v) for v in scores.values()) < threshold, scores
