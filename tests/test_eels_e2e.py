"""The EELS product path with the committed model: simulator CLI -> service -> subscriber, and the demo."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from scanlens.sim.eels import load_ground_truth
from scanlens.model_files import MODEL_DIR
from scanlens.app.config import Settings
from scanlens.app.server import running
from scanlens.client import Subscriber
from scanlens.testing import run_cli, run_cli_result


async def test_sim_cli_on_a_foreign_axis_is_recognized(tmp_path):
    """A spectrometer with 1024 channels of 0.125 eV from -2 eV: resampled onto the model axis."""
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=MODEL_DIR, models=["eels-mlp"], inference_threads=1)
    truth_path = tmp_path / "truth.npz"
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], scan_id="cli-1") as sub:
            await sub.wait_ready()
            sim = asyncio.create_task(run_cli(
                "-m", "scanlens.sim.cli", "eels", "--ingest", server.endpoints["ingest"], "--publish",
                server.endpoints["publish"], "--scan-id", "cli-1",
                "--rows", "64", "--cols", "48", "--dwell-us", "0", "--channels", "1024", "--offset-ev", "-2",
                "--dispersion-ev", "0.125", "--seed", "7", "--truth", str(truth_path), "--quiet"))
            result = await sub.collect_scan("cli-1", timeout=60)
            report = json.loads(await sim)
    assert report["messages"] == 64 and report["pixels"] == 64 * 48 and report["state"] == "complete"
    s = result.summary
    assert s.state == "complete" and s.pixels_recognized == 64 * 48 and s.lost == [] and s.rejected == []
    truth = load_ground_truth(truth_path)
    accuracy = np.mean(result.maps["eels-mlp"]["class"] == truth["phase"])
    rmse = np.sqrt(np.mean((result.maps["eels-mlp"]["abundance"] - truth["abundance"]) ** 2))
    assert accuracy >= 0.97, accuracy  # a small scan: thin layers, so relatively more interface pixels
    assert rmse <= 0.05, rmse


async def _sim_on_a_narrow_axis(*args: str, messages: int):
    """The EELS simulator streaming 2 x 4 spectra on 0–63.75 eV (the models read 5–124.5 eV) to a service
    with the shipped models; (its CliResult, the first ``messages`` headers published for the scan)."""
    settings = Settings(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                        model_dir=MODEL_DIR, inference_threads=1)
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], scan_id="narrow") as sub:
            await sub.wait_ready()
            sim = await run_cli_result("-m", "scanlens.sim.cli", "eels", "--ingest", server.endpoints["ingest"],
                                       "--publish", server.endpoints["publish"], "--scan-id", "narrow", "--rows", "2",
                                       "--cols", "4", "--dwell-us", "0", "--channels", "256", "--quiet", *args)
            headers = [(await sub.recv(10)).header for _ in range(messages)]
    return sim, headers


async def test_sim_cli_on_a_too_narrow_axis_runs_pca_and_says_which_recognizers_cannot(tmp_path):
    """Protocol 1.1 (docs/protocol.md §3.1): with no recognizer named, those of the modality whose axis the
    scan does not cover are left out, each with its reason (scan_started.skipped, a recognizers_skipped
    event); with none left, spectra go to pca. The simulator prints the reason as one warning line."""
    sim, (started, event) = await _sim_on_a_narrow_axis(messages=2)
    assert started.kind == "scan_started" and started.recognizers == ["pca"]
    assert set(started.skipped) == {"eels-mlp", "eels-fit"}
    for reason in started.skipped.values():
        assert "0–63.75 eV" in reason and "5–124.5 eV" in reason and "does not cover" in reason
    assert event.kind == "event" and event.code == "recognizers_skipped" and event.level == "warning"
    assert "'eels-mlp'" in event.reason and "'eels-fit'" in event.reason and "running ['pca']" in event.reason
    assert sim.returncode == 0 and json.loads(sim.stdout)["state"] == "complete"
    (line,) = sim.stderr.strip().splitlines()
    assert line.startswith("warning: scan narrow: not running eels-") and line.endswith("; running pca")


async def test_sim_cli_naming_a_recognizer_whose_axis_is_not_covered_is_refused_naming_it(tmp_path):
    sim, (header,) = await _sim_on_a_narrow_axis("--recognizer", "eels-mlp", "--recognizer", "pca", messages=1)
    assert header.kind == "event" and header.code == "scan_rejected"
    assert header.reason.startswith("recognizer 'eels-mlp': incoming axis 0–63.75 eV")
    assert "5–124.5 eV" in header.reason and "pca" not in header.reason
    # the simulator says so too: exit status 4 and the reason in one line, nothing on stdout
    assert sim.returncode == 4 and sim.stdout == ""
    assert sim.stderr.strip().splitlines() == [f"error: scan narrow rejected: {header.reason}"]


@pytest.mark.timeout(180)
async def test_demo_defaults_meet_the_targets(tmp_path):
    """The README's demo (default scan, seed 0; streamed without pacing to save time) meets its targets."""
    out = await run_cli("-c", "from scanlens.app.cli import main; main()", "demo", "--json", "--dwell-us", "0",
                        "--out", str(tmp_path))
    report = json.loads(out)
    assert report["accuracy"] >= 0.99 and report["abundance_rmse"] <= 0.05
    assert report["pixels"] == report["recognized"] == 128 * 128
    assert report["lost"] == report["rejected"] == report["unrecognized_pixels"] == 0
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p99"]
    assert (tmp_path / "demo-eels.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo-eels.json").read_text()) == report
    assert report["recognizers"] == ["eels-mlp", "pca"]
    ratio = report["pca_explained_variance"]
    assert len(ratio) == 4 and ratio == sorted(ratio, reverse=True) and sum(ratio[:2]) > 0.9


@pytest.mark.timeout(180)
async def test_demo_physics_fit_finds_the_unknown_phase(tmp_path):
    out = await run_cli("-c", "from scanlens.app.cli import main; main()", "demo", "--json", "--dwell-us", "0",
                        "--recognizer", "eels-fit", "--unknown-region", "--out", str(tmp_path))
    report = json.loads(out)
    assert report["recognizer"] == "eels-fit" and report["unrecognized_pixels"] == 0
    assert report["abundance_rmse"] <= 0.03 and report["abundance_rmse_pixels"] == "without the unknown phase"
    assert report["chi2_auc"] >= 0.95
    assert "accuracy" not in report  # the fit has no classes


async def test_demo_record_leaves_the_scan_recording(tmp_path):
    """`scanlens demo --record DIR` leaves the demo scan's recording in DIR, as docs/operations.md describes:
    an HDF5 file with the raw spectrum image on calibrated axes and the published maps."""
    import h5py

    from scanlens.recording import open_recording

    rec_dir = tmp_path / "rec"
    out = await run_cli("-c", "from scanlens.app.cli import main; main()", "demo", "--json", "--dwell-us", "0",
                        "--rows", "8", "--cols", "16", "--out", str(tmp_path), "--record", str(rec_dir))
    report = json.loads(out)
    path = rec_dir / f"{report['scan_id']}.h5"
    assert report["recording"] == str(path) and report["state"] == "complete"
    with h5py.File(path, "r") as f:
        data = f[f"Experiments/{report['scan_id']}/data"]
        assert data.shape[:2] == (8, 16) and not np.isnan(data[()]).any()
        assert f[f"Experiments/{report['scan_id']}/axis-0"].attrs["units"] == "nm"
    with open_recording(path) as rec:
        assert rec.state == "complete" and rec.maps("eels-mlp")["filled"].all()
        assert rec.summary.pixels_recognized == report["recognized"] == 8 * 16
