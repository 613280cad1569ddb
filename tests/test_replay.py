"""Replay (issue 13, part 3): a recording streamed back through the protocol like any instrument gives,
with the same models and batching settings, maps bitwise identical to the recorded ones, for a
spectral scan (eels-mlp, and pca compared after the scan's end) and a movie (the frame test model).

Real sockets on loopback, real ONNX models and real recordings: a scan is recorded by one service
(``record_dir``), replayed by ``scanlens.app.replay`` into another that records too, and the two files
are compared. ``scanlens replay`` itself is run as a subprocess for its exit codes.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scanlens.app.replay import replay
from scanlens.client import ScanRejected
from scanlens.model_files import MODEL_DIR
from scanlens.protocol.messages import PixelSize
from scanlens.recording import open_recording
from scanlens.sim.eels import EELSConfig, EELSSample
from scanlens.testing import FRAME_PIXEL_NM, connected, loopback_settings, render_frame, serving, write_frame_model

ROWS, COLS = 12, 32


def _settings(record, **kw):
    # one line per inference batch in both runs: batching decides the floating-point sums
    return loopback_settings(MODEL_DIR, models=["eels-mlp"], record_dir=record, max_batch_pixels=COLS, **kw)


async def _record_eels(record):
    cfg = EELSConfig(rows=ROWS, cols=COLS, seed=11)
    sample = EELSSample(cfg)
    async with serving(_settings(record)) as server, connected(server) as (inst, sub, _):
        async with inst.scan("orig", "eels", (ROWS, COLS), cfg.axis, recognizers=["eels-mlp", "pca"],
                             scan_step=PixelSize(size=0.4, units="nm")) as scan:
            for r in range(ROWS):
                await scan.send_line(r, sample.line(r))
        result = await sub.collect_scan("orig", timeout=30)
    assert result.summary.state == "complete"
    (path,) = sorted(record.glob("*.h5"))
    return path


async def test_a_replayed_spectral_scan_gives_the_recorded_maps_bit_for_bit(tmp_path):
    original = await _record_eels(tmp_path / "a")
    again = tmp_path / "b"
    async with serving(_settings(again)) as server:
        report = await replay(original, server.endpoints["ingest"], server.endpoints["publish"], pace="fast")
    assert report.scan_id == "orig-replay" and report.messages == ROWS
    assert report.summary.state == "complete" and report.summary.pixels_recognized == ROWS * COLS
    (copy,) = sorted(again.glob("*.h5"))
    with open_recording(original) as a, open_recording(copy) as b:
        np.testing.assert_array_equal(a.data(), b.data())
        assert b.scan_start.scan_step == a.scan_start.scan_step
        ma, mb = a.maps("eels-mlp"), b.maps("eels-mlp")
        assert set(ma) == set(mb) and "class" in ma
        for name in ma:
            np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)
        # pca: the same spectra in the same order give the same final basis
        pa, pb = a.summary.recognizers["pca"], b.summary.recognizers["pca"]
        assert pa.explained_variance_ratio == pb.explained_variance_ratio


async def test_a_replayed_movie_gives_the_recorded_frame_results(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    write_frame_model(models / "frame.onnx")
    shape = (48, 64)
    atoms = np.array([(x, y) for y in range(8, 44, 12) for x in range(8, 60, 12)], np.float32)
    frames = [render_frame(shape, atoms, np.array([(20.0 + 2 * t, 26.0)])) for t in range(5)]
    settings = loopback_settings(models)
    async with serving(settings.model_copy(update={"record_dir": tmp_path / "a"})) as server, \
            connected(server) as (inst, sub, _):
        async with inst.movie("mov", "haadf", shape, PixelSize(size=FRAME_PIXEL_NM, units="nm"), frames=5,
                              frame_interval_s=0.2) as movie:
            for i, image in enumerate(frames):
                await movie.send_frame(i, image)
        await sub.collect_movie("mov", timeout=30)
    (original,) = sorted((tmp_path / "a").glob("*.h5"))
    async with serving(settings.model_copy(update={"record_dir": tmp_path / "b"})) as server:
        report = await replay(original, server.endpoints["ingest"], server.endpoints["publish"], scan_id="mov-2",
                              pace="recorded", speed=10.0)
    assert report.summary.state == "complete" and report.messages == 5
    (copy,) = sorted((tmp_path / "b").glob("*.h5"))
    with open_recording(original) as a, open_recording(copy) as b:
        assert b.scan_start.frame_interval_s == 0.2 and b.scan_id == "mov-2"
        ma, mb = a.maps("frame-test"), b.maps("frame-test")
        for name in ma:
            np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


async def test_replay_with_another_recognizer_and_its_refusals(tmp_path):
    original = await _record_eels(tmp_path / "a")
    async with serving(_settings(tmp_path / "b")) as server:
        report = await replay(original, server.endpoints["ingest"], server.endpoints["publish"], scan_id="pca-only",
                              recognizers=["pca"], pace="fast")
        assert report.summary.state == "complete" and list(report.summary.recognizers) == ["pca"]
        with pytest.raises(ScanRejected, match="no-such-model"):
            await replay(original, server.endpoints["ingest"], server.endpoints["publish"], scan_id="x",
                         recognizers=["no-such-model"], pace="fast")
    with pytest.raises(ValueError, match="speed"):
        await replay(original, "tcp://127.0.0.1:1", speed=0)


def test_scanlens_replay_exits_with_one_line(tmp_path):
    import subprocess

    cli = [sys.executable, "-c", "from scanlens.app.cli import main; main()", "replay"]
    missing = subprocess.run([*cli, str(tmp_path / "nope.h5")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.h5" in missing.stderr
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    junk = subprocess.run([*cli, str(tmp_path / "junk.h5")], capture_output=True, text=True, timeout=60)
    assert junk.returncode == 2 and junk.stderr.count("\n") == 1, junk.stderr
    helped = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--pace" in helped.stdout
