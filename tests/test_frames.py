"""Frames through the service: atoms and defects per frame, rescaling to the model's pixel size,
tracking, newest-frame-wins with reported skips, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.protocol.messages import Data, Frame, FrameResult, PixelSize, ScanEnd, ScanStart, ScanSummary
from scanlens.testing import FRAME_PIXEL_NM, band_axis, live, render_frame, wait_for_event, write_frame_model


@pytest.fixture
def frame_settings(settings, model_dir):
    write_frame_model(model_dir / "frame.onnx")
    return settings


def lattice(shape, step=12.0, offset=8.3):
    xs = np.arange(offset, shape[1] - 6, step)
    ys = np.arange(offset + 0.4, shape[0] - 6, step)
    return np.array([(x, y) for y in ys for x in xs], np.float32)


async def send_movie(inst, scan_id, frames, pixel_nm=FRAME_PIXEL_NM, policy="lossless"):
    shape = frames[0].shape
    await inst.send(ScanStart(scan_id=scan_id, modality="haadf", shape=shape, frames=len(frames), policy=policy,
                              pixel_size=PixelSize(size=pixel_nm, units="nm")))
    for i, img in enumerate(frames):
        await inst.send(Frame(scan_id=scan_id, seq=i, frame=i, shape=shape, dtype="float32"), [img])
    await inst.send(ScanEnd(scan_id=scan_id, n_messages=len(frames)))


async def collect(sub, scan_id):
    results = []
    while True:
        msg = await sub.recv(20)
        if isinstance(msg.header, FrameResult) and msg.header.scan_id == scan_id:
            results.append(msg)
        if isinstance(msg.header, ScanSummary) and msg.header.scan_id == scan_id:
            return results, msg.header


def match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance from each true position to the nearest found one."""
    d = np.linalg.norm(truth[:, None, :] - found[None, :, :2], axis=-1)
    return d.min(axis=1)


async def test_atoms_defects_and_tracks_per_frame(frame_settings):
    shape = (64, 80)
    atoms = lattice(shape)
    vac_path = [(30 + 2 * t, 40) for t in range(5)]  # one vacancy walking right, 2 px per frame
    frames = [render_frame(shape, atoms, np.array([v])) for v in vac_path]
    async with live(frame_settings, scan_id="movie") as (_, inst, sub):
        await send_movie(inst, "movie", frames)
        results, summary = await collect(sub, "movie")
    assert [r.header.frame for r in results] == list(range(5))
    for r, v in zip(results, vac_path):
        found = r.arrays["atoms"]
        assert r.header.n_atoms == len(found)
        far = np.linalg.norm(atoms - np.array(v), axis=1) > 4  # atoms not overlapped by the plateau
        assert match(found, atoms[far]).max() < 0.25
        defects = r.arrays["defects"]
        assert len(defects) == 1 and np.allclose(defects[0, :2], v, atol=0.6) and defects[0, 2] == 0
        assert r.arrays["classes"].shape == shape
    track_ids = {float(r.arrays["defects"][0, 4]) for r in results}
    assert len(track_ids) == 1, "the vacancy keeps one track"
    assert summary.state == "complete" and summary.skipped == [] and summary.pixels_recognized == 5 * 64 * 80
    rec = summary.recognizers["frame-test"]
    assert rec.frames_recognized == 5 and rec.tracking["n_tracks"] == 1


async def test_frames_are_rescaled_to_the_model_pixel_size(frame_settings):
    shape = (96, 96)
    atoms = lattice(shape, step=22.0, offset=12.2)
    img = render_frame(shape, atoms, np.zeros((0, 2)), sigma=3.0)  # 0.01 nm/px: everything twice as large
    async with live(frame_settings, scan_id="fine") as (_, inst, sub):
        await send_movie(inst, "fine", [img], pixel_nm=FRAME_PIXEL_NM / 2)
        results, summary = await collect(sub, "fine")
    assert summary.state == "complete"
    found = results[0].arrays["atoms"]
    assert len(found) == len(atoms)
    assert match(found, atoms).max() < 0.6  # in the frame's own pixels


@pytest.mark.parametrize("pixel,fragment", [
    (PixelSize(size=0.001, units="nm"), "supported 0.25–4"),
    (PixelSize(size=0.02, units="eV"), "not a conversion between lengths"),
])
async def test_unusable_pixel_size_is_refused(frame_settings, pixel, fragment):
    async with live(frame_settings) as (_, inst, sub):
        await inst.send(ScanStart(scan_id="odd", modality="haadf", shape=(32, 32), pixel_size=pixel))
        ev = await wait_for_event(sub, "scan_rejected")
    assert ev.scan_id == "odd" and fragment in ev.reason


async def test_newest_frame_wins_reports_every_skip(frame_settings):
    shape = (256, 256)
    frames = [render_frame(shape, lattice(shape), np.zeros((0, 2)))] * 30
    async with live(frame_settings, scan_id="live") as (srv, inst, sub):
        await send_movie(inst, "live", frames, policy="latest")
        results, summary = await collect(sub, "live")
    recognized = [r.header.seq for r in results]
    assert summary.skipped, "30 frames sent at once should overrun the recognizer"
    assert sorted(recognized + summary.skipped) == list(range(30)), "every frame recognized or reported skipped"
    assert summary.lost == [] and summary.rejected == [] and summary.state == "incomplete"
    assert recognized == sorted(recognized) and recognized[-1] == 29, "in order, and the newest always wins"


async def test_lossless_policy_recognizes_every_frame(frame_settings):
    shape = (128, 128)
    frames = [render_frame(shape, lattice(shape), np.zeros((0, 2)))] * 12
    async with live(frame_settings, scan_id="all") as (_, inst, sub):
        await send_movie(inst, "all", frames, policy="lossless")
        results, summary = await collect(sub, "all")
    assert [r.header.seq for r in results] == list(range(12)) and summary.state == "complete"


async def test_frame_and_data_messages_must_match_the_scan_kind(frame_settings):
    async with live(frame_settings) as (_, inst, sub):
        await inst.send(ScanStart(scan_id="img", modality="haadf", shape=(16, 16),
                                  pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm")))
        line = np.zeros((16, 60), np.float32)
        await inst.send(Data(scan_id="img", seq=0, row=0, shape=line.shape, dtype="float32"), [line])
        ev = await wait_for_event(sub, "data_rejected")
        assert "imaging scan" in ev.reason
        await inst.send(Frame(scan_id="img", seq=1, frame=0, shape=(16, 8), dtype="float32"),
                        [np.zeros((16, 8), np.float32)])
        ev = await wait_for_event(sub, "data_rejected")
        assert "differs from scan_start" in ev.reason
        await inst.send(ScanStart(scan_id="spec", modality="eels", shape=(2, 2), axis=band_axis()))
        await inst.send(Frame(scan_id="spec", seq=0, frame=0, shape=(2, 2), dtype="float32"),
                        [np.zeros((2, 2), np.float32)])
        ev = await wait_for_event(sub, "data_rejected")
        assert "spectral scan" in ev.reason


async def test_simulated_movie_streams_through_the_client(frame_settings):
    """The STEM simulator's movie, streamed by stream_movie and collected by collect_movie (plumbing;
    the test model is not trained for STEM images)."""
    from scanlens.sim.stem import STEMConfig, STEMSource
    from scanlens.sim.stream import stream_movie

    source = STEMSource(STEMConfig(size=128, frames=4, n_defects=2, seed=3))
    async with live(frame_settings, scan_id="sim-movie") as (_, inst, sub):
        report = await stream_movie(inst, source, "sim-movie")
        result = await sub.collect_movie("sim-movie", keep_classes=False)
    assert report.messages == 4
    assert result.started.pixel_size.size == source.pixel_size_nm and result.started.frames == 4
    assert sorted(result.frames["frame-test"]) == [0, 1, 2, 3]
    assert all("classes" not in f and f["atoms"].shape[1] == 3 for f in result.frames["frame-test"].values())
    assert result.summary.state == "complete" and result.summary.recognizers["frame-test"].frames_recognized == 4
    # running tracking statistics come with every frame; after the last frame they are the summary's
    running = result.tracking["frame-test"]
    assert running["n_frames"] == 4
    assert running == result.summary.recognizers["frame-test"].tracking


async def test_spectral_recognizer_requested_for_frames_is_refused(frame_settings):
    async with live(frame_settings) as (_, inst, sub):
        await inst.send(ScanStart(scan_id="mixed", modality="haadf", shape=(16, 16), recognizers=["pca"],
                                  pixel_size=PixelSize(size=FRAME_PIXEL_NM, units="nm")))
        ev = await wait_for_event(sub, "scan_rejected")
    assert ev.scan_id == "mixed" and "takes spectra" in ev.reason


async def test_a_frame_without_dynamic_range_is_refused_clearly(frame_settings):
    """Issue 11: intensity units do not matter (the recognizer normalises), but a frame with nothing to
    normalise — every pixel equal — is refused, not recognized as an empty lattice; the scan goes on."""
    shape = (32, 32)
    good = render_frame(shape, lattice(shape), np.zeros((0, 2)))
    frames = [np.zeros(shape, np.float32), np.full(shape, 7.5, np.float32), good]
    async with live(frame_settings, scan_id="flat") as (_, inst, sub):
        await send_movie(inst, "flat", frames)
        results, summary = await collect(sub, "flat")
    assert [r.header.frame for r in results] == [2]
    assert sorted(r.seq for r in summary.rejected) == [0, 1]
    assert all("no usable dynamic range" in r.reason for r in summary.rejected)
    assert summary.state == "incomplete" and summary.recognizers["frame-test"].frames_recognized == 1
    assert summary.recognizers["frame-test"].novel_fraction is None  # the test model has no novelty
