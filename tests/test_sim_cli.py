"""`scanlens sim` tells the truth about its scan: exit 0 with the JSON report only when the scan is complete,
otherwise one clear line on stderr and an exit status per way of failing (no service, refused, service
stopped, incomplete). Real processes: the simulator as `python -m scanlens.sim.cli`, a real server on
loopback (in this process, or as `scanlens serve` killed with SIGKILL), real ONNX models."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sys

import pytest

from scanlens.client import Subscriber
from scanlens.model_files import MODEL_DIR
from scanlens.sim.cli import (EXIT_INCOMPLETE, EXIT_NO_SERVICE, EXIT_REJECTED, EXIT_SERVICE_STOPPED,
                              EXIT_USAGE)
from scanlens.testing import loopback_settings, run_cli_result, serving, wait_for

SIM = ("-m", "scanlens.sim.cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoints(server) -> list[str]:
    return ["--ingest", server.endpoints["ingest"], "--publish", server.endpoints["publish"]]


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


async def test_complete_scan_exits_0_with_its_report(server):
    sim = await run_cli_result(*SIM, "eels", *endpoints(server), "--scan-id", "ok", "--rows", "4", "--cols", "6",
                               "--dwell-us", "0", "--quiet")
    assert sim.returncode == 0, sim.stderr
    report = json.loads(sim.stdout)
    assert report["scan_id"] == "ok" and report["messages"] == 4 and report["pixels"] == 24
    assert report["state"] == "complete" and sim.stderr == ""


async def test_no_service_exits_3_in_the_connect_timeout():
    """Nothing listens: the simulator used to queue its scan, wait, print a success JSON and exit 0."""
    ingest, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    sim = await run_cli_result(*SIM, "eels", "--ingest", ingest, "--publish", publish, "--connect-timeout", "0.5",
                               "--rows", "2", "--cols", "2", "--quiet", timeout=60)
    assert sim.returncode == EXIT_NO_SERVICE and sim.stdout == ""
    line = one_error_line(sim.stderr)
    assert f"no heartbeat from a scanlens service on {publish} within 0.5 s" in line


async def test_no_answer_to_scan_start_exits_3(server):
    """The service publishes, but the ingest endpoint is not its own: nobody answers the scan_start."""
    sim = await run_cli_result(*SIM, "eels", "--ingest", f"tcp://127.0.0.1:{free_port()}", "--publish",
                               server.endpoints["publish"], "--scan-id", "lost", "--connect-timeout", "0.5",
                               "--rows", "2", "--cols", "2", "--quiet", timeout=60)
    assert sim.returncode == EXIT_NO_SERVICE and sim.stdout == ""
    assert "no answer to the scan_start of lost within 0.5 s" in one_error_line(sim.stderr)


@pytest.mark.parametrize("args,reason", [
    (["--recognizer", "nope"], "unknown recognizer 'nope'"),
    # 0-24.75 eV; the band model reads 10-70 eV. Named, it refuses the scan (protocol 1.1; by default it
    # would be left out and pca would run: tests/test_eels_e2e.py)
    (["--channels", "100", "--recognizer", "band"], "recognizer 'band': incoming axis 0–24.75 eV"),
])
async def test_refused_scan_exits_4_with_the_reason(server, args, reason):
    sim = await run_cli_result(*SIM, "eels", *endpoints(server), "--scan-id", "refused", "--rows", "2", "--cols",
                               "2", "--quiet", *args)
    assert sim.returncode == EXIT_REJECTED and sim.stdout == ""
    line = one_error_line(sim.stderr)
    assert line.startswith("error: scan refused rejected: ") and reason in line
    # nothing more was sent after the refusal (no data, no scan_end: no unknown_scan events)
    assert server.counters.get("event.unknown_scan", 0) == 0


async def test_incomplete_scan_exits_6_and_prints_the_summary(model_dir):
    """Lines 0.8 s apart, a service that closes a silent scan after 0.5 s: the scan times out."""
    settings = loopback_settings(model_dir, scan_timeout_s=0.5, start_timeout_s=0.5)
    async with serving(settings) as server:
        sim = await run_cli_result(*SIM, "eels", *endpoints(server), "--scan-id", "slow", "--rows", "2", "--cols",
                                   "2", "--dwell-us", "400000", "--quiet", timeout=60)
    assert sim.returncode == EXIT_INCOMPLETE, sim.stderr
    report = json.loads(sim.stdout)
    assert report["state"] == "timed_out" and report["summary"]["state"] == "timed_out"
    assert report["summary"]["scan_id"] == "slow" and report["summary"]["pixels_expected"] == 4
    line = one_error_line(sim.stderr)
    assert line.startswith("error: scan slow ended timed_out:") and "of 4 pixels recognized" in line


@pytest.mark.timeout(120)
async def test_service_killed_mid_scan_exits_5(tmp_path, model_dir):
    """`scanlens serve` killed with SIGKILL while the simulator streams: its heartbeat stops, no summary
    will come, and the simulator says so within --heartbeat-timeout instead of waiting for ever."""
    ingest, publish, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from scanlens.app.cli import main; main()", "serve", "--ingest", ingest, "--publish",
        publish, "--control", control, "--model-dir", str(model_dir), "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with Subscriber(publish, scan_id="doomed") as sub:
            await sub.wait_ready(timeout=60)
            sim = asyncio.create_task(run_cli_result(
                *SIM, "eels", "--ingest", ingest, "--publish", publish, "--scan-id", "doomed", "--rows", "50",
                "--cols", "4", "--dwell-us", "25000", "--heartbeat-timeout", "1", "--quiet", timeout=90))
            await wait_for(sub, "maps", scan_id="doomed", timeout=60)  # streaming is under way
            serve.send_signal(signal.SIGKILL)
            await serve.wait()
            result = await sim
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
    assert result.returncode == EXIT_SERVICE_STOPPED and result.stdout == ""
    line = one_error_line(result.stderr)
    assert f"the service on {publish} stopped: no heartbeat for 1 s and no summary for scan doomed" in line


async def test_malformed_endpoint_is_one_line():
    sim = await run_cli_result(*SIM, "eels", "--ingest", "foo", "--quiet", timeout=60)
    assert sim.returncode == EXIT_USAGE and sim.stdout == ""
    assert one_error_line(sim.stderr) == "error: cannot connect to --ingest 'foo': Invalid argument (addr='foo')"


@pytest.mark.timeout(120)
async def test_stem_movie_of_the_smallest_advertised_size_is_recognized(tmp_path):
    """`--size 64` is in the advertised range (64-2048): the default 12 defects cannot fit in a 64 px
    frame (they keep 2 lattice constants from the edges), so the default is capped to what fits, with a
    note, and the movie streams to the shipped stem-unet."""
    models = tmp_path / "shipped"
    models.mkdir()
    shutil.copy(MODEL_DIR / "stem-unet.onnx", models)
    async with serving(loopback_settings(models)) as server:
        sim = await run_cli_result(*SIM, "stem", *endpoints(server), "--size", "64", "--frames", "3", "--frame-ms",
                                   "0", "--scan-id", "small", "--quiet", timeout=100)
    assert sim.returncode == 0, sim.stderr
    report = json.loads(sim.stdout)
    assert report["frames"] == 3 and report["state"] == "complete"
    assert sim.stderr.strip() == ("note: a 64 px frame of ws2 at 0.02 nm/px holds 0 defects with room to move, not "
                                  "the default 12: simulating 0 (--defects sets it)")


# --------------------------------------------------------------------------- user errors: one line, exit 2


@pytest.mark.parametrize("argv,fragment", [
    (["sim", "eels", "--dose", "-1"], "error: dose must be > 0"),
    (["sim", "eels", "--channels", "0"], "error: --channels: Input should be greater than or equal to 1"),
    (["sim", "eels", "--dispersion-ev", "0"], "error: --dispersion-ev: Input should be greater than 0"),
    (["sim", "eels", "--scan-id", "a/b"], "'a/b' is not a scan id"),
    (["sim", "eels", "--recognizer", "two words"], "'two words' is not a recognizer name"),
    (["sim", "eels", "--truth", "/proc/no/such/dir/t.npz"], "error: cannot write the ground truth to"),
    (["sim", "bepfm", "--noise", "-1"], "error: pixel_size_um must be > 0 and noise >= 0"),
    (["sim", "loops", "--seed", "-1"], "error: noise and seed must be >= 0"),
    (["sim", "stem", "--policy", "newest"], "'newest' is not one of lossless, latest"),
    (["sim", "stem", "--size", "64", "--defects", "1"], "error: frame of 64 px too small for defects"),
    (["sim", "stem-frame", "--size", "64", "--out-image", "/proc/no/x.npy", "--out-labels", "/proc/no/y.npy"],
     "error: cannot write /proc/no/x.npy"),
    (["sim", "eels", "--connect-timeout", "0"], "--connect-timeout"),
    (["schema", "--out", "/proc/no/such/dir/schema.json"], "error: cannot write /proc/no/such/dir/schema.json"),
    (["status", "--timeout", "-1"], "--timeout"),
    (["demo", "--out", "/proc/no/such/dir"], "error: cannot create --out /proc/no/such/dir"),
    (["train", "eels-fit", "--out", "/proc/no/such/dir/x.onnx"], "error: cannot write --out /proc/no/such/dir/x.onnx"),
])
def test_user_errors_are_one_clear_line(argv, fragment):
    """Each of these used to end in a traceback (or, for `status --timeout -1`, to wait -1 s)."""
    from typer.testing import CliRunner

    from scanlens.app.cli import app

    result = CliRunner().invoke(app, [*argv, "--quiet"] if argv[:2] in (["sim", "eels"], ["sim", "bepfm"],
                                                                        ["sim", "loops"], ["sim", "stem"]) else argv,
                                terminal_width=200)
    assert result.exit_code == EXIT_USAGE, result.output
    words = " ".join(result.output.replace("│", " ").split())
    assert fragment in words and "Traceback" not in result.output
