"""Execution providers from the configuration, on the CPU-only onnxruntime build of this machine: names and
their validation, the fallback rule (a warning while a listed provider remains, a one-line error when none
does), the warning in the log once and in ``status``, per-provider threads and parallel, ``scanlens serve
--provider``, and the I/O-binding path of the frame recognizers (bitwise the outputs of ``session.run``)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from scanlens.app.cli import _one_line
from scanlens.app.config import Settings, load_settings
from scanlens.client import Control
from scanlens.model_files import MODEL_DIR
from scanlens.pipeline import (DEFAULT_PARALLEL, DEFAULT_THREADS, FrameRecognizer, ModelError, OnnxModel, PCAAnalyzer,
                               ProviderError, ScanManager, WorkerOptions, load_recognizers, open_recognizer,
                               per_provider, resolve_providers)
from scanlens.pipeline.providers import check_session
from scanlens.protocol.messages import Status
from scanlens.testing import loopback_settings, render_frame, serving

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
EELS, STEM = MODEL_DIR / "eels-mlp.onnx", MODEL_DIR / "stem-unet.onnx"
#: what a CUDA-then-CPU configuration says on this build
CUDA_FALLBACK = ("execution provider CUDA is not available in this onnxruntime build (available: CPU); "
                 "falling back to CPU")
SERVE = ("-c", "from scanlens.app.cli import main; main()", "serve")


@pytest.fixture(autouse=True)
def cpu_only_build():
    """These tests are about a build without GPU providers: say so if one ever runs them elsewhere."""
    if set(ort.get_available_providers()) & {CUDA, "TensorrtExecutionProvider"}:
        pytest.skip("this onnxruntime build has a GPU provider; the fallback tests need a CPU-only build")


# --------------------------------------------------------------------------- names, settings


def test_names_short_full_and_any_case_are_one_provider():
    s = Settings(providers=["cuda", "CUDAExecutionProvider", "TensorRT", "cpu"])
    assert s.providers == ["CUDA", "TensorRT", "CPU"]
    assert Settings().providers == ["CPU"]


@pytest.mark.parametrize("toml,words", [
    ('providers = ["CUDA", "GPU"]', "providers: unknown execution provider 'GPU'; known: CPU, CUDA, TensorRT, ROCm, "
                                    "OpenVINO, DirectML, CoreML"),
    ("providers = []", "providers: at least one execution provider is needed"),
    ("inference_parallel = {CPU = 2, GPU = 1}", "inference_parallel: unknown execution provider 'GPU'"),
    ("inference_threads = {CPU = 0}", "inference_threads: CPU: must be 1 to 64"),
    ("inference_parallel = 17", "inference_parallel: must be 1 to 16"),
])
def test_a_bad_provider_setting_is_a_one_line_config_error(tmp_path, toml, words):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml + "\n")
    with pytest.raises(ValidationError) as info:
        load_settings(cfg)
    line = _one_line(info.value)
    assert "\n" not in line and line.startswith(words), line


def test_per_provider_tables_resolve_as_documented(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('providers = ["CUDA", "CPU"]\ninference_parallel = {cuda = 1, CPU = 3}\n'
                   'inference_threads = {CUDA = 4}\n')
    s = load_settings(cfg)
    assert s.inference_parallel == {"CUDA": 1, "CPU": 3}  # keys normalized to short names
    assert per_provider(s.inference_parallel, "CUDA", DEFAULT_PARALLEL) == 1  # its own entry
    assert per_provider(s.inference_parallel, "TensorRT", DEFAULT_PARALLEL) == 3  # none: the CPU entry
    assert per_provider(s.inference_threads, "CPU", DEFAULT_THREADS) == DEFAULT_THREADS == 1  # neither: default
    assert per_provider({"CPU": 2}, "CUDAExecutionProvider", 9) == 2  # full names too
    assert per_provider(5, "CUDA", 9) == 5  # the plain int applies to every provider
    assert Settings().inference_threads == 1 and Settings().inference_parallel == 2  # the plain defaults stay


# --------------------------------------------------------------------------- the fallback rule


def test_an_unavailable_provider_falls_back_with_a_warning():
    assert resolve_providers(["CUDA", "CPU"]) == ([CPU], [CUDA_FALLBACK])
    assert resolve_providers(["CPU"]) == ([CPU], [])
    # with a build that has CUDA (given, not this one's): kept in the requested order, TensorRT left out
    kept, warnings = resolve_providers(["TensorRT", "CUDA", "CPU"], [CUDA, "AzureExecutionProvider", CPU])
    assert kept == [CUDA, CPU]
    assert warnings == ["execution provider TensorRT is not available in this onnxruntime build (available: CUDA, "
                        "CPU); falling back to CUDA"]


def test_nothing_available_is_one_clear_error():
    with pytest.raises(ProviderError) as info:
        resolve_providers(["CUDA"])
    msg = str(info.value)
    assert isinstance(info.value, ModelError) and "\n" not in msg
    assert msg.startswith("execution provider CUDA is not available in this onnxruntime build (available: CPU)")
    assert "install onnxruntime-gpu" in msg and 'add "CPU" to providers' in msg


def test_a_provider_that_does_not_take_the_session_is_a_fallback_too():
    assert check_session([CUDA, CPU], [CPU]) == [
        "execution provider CUDA is available but did not take the session (its libraries may be missing; see "
        "onnxruntime's log); falling back to CPU"]
    assert check_session([CUDA], [CUDA, CPU]) == []  # CPU beside CUDA runs the nodes CUDA has no kernel for
    with pytest.raises(ProviderError, match="CUDA is in this onnxruntime build but did not take the session"):
        check_session([CUDA], [CPU])


def test_a_real_model_asked_for_cuda_then_cpu_runs_on_cpu():
    model = OnnxModel.open(EELS, threads=1, providers=["CUDA", "CPU"])
    assert model.session.get_providers() == [CPU] and model.providers == ["CPU"]
    assert model.warnings == [CUDA_FALLBACK] and model.output_device == "cpu"
    x = np.ones((2, model.session.get_inputs()[0].shape[1]), np.float32)
    assert model.run([model.card.outputs[0].name], x)[0].shape[0] == 2  # and it runs
    assert OnnxModel.open(EELS, threads=1).warnings == []  # the default, CPU: nothing to say
    with pytest.raises(ProviderError, match="CUDA is not available"):
        open_recognizer(EELS, providers=["CUDA"])


def test_threads_follow_the_provider_that_took_the_session(monkeypatch):
    # a build that says it has CUDA but whose CUDA does not take the session: onnxruntime itself leaves
    # CUDA out (its UserWarning), the session runs on CPU, and it is made again with CPU's thread count
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        model = OnnxModel.open(EELS, threads={"CUDA": 4, "CPU": 1}, providers=["CUDA", "CPU"])
    assert model.providers == ["CPU"] and model.threads == 1
    assert model.session.get_session_options().intra_op_num_threads == 1
    assert model.warnings == ["execution provider CUDA is available but did not take the session (its libraries "
                              "may be missing; see onnxruntime's log); falling back to CPU"]
    monkeypatch.undo()
    assert OnnxModel.open(EELS, threads={"CPU": 3}).session.get_session_options().intra_op_num_threads == 3


def test_parallel_per_provider_reaches_each_worker():
    recs = {"eels-mlp": open_recognizer(EELS, threads=1, providers=["CUDA", "CPU"])}
    assert WorkerOptions(parallel={"CUDA": 1, "CPU": 3}).parallel_of(recs["eels-mlp"]) == 3  # runs on CPU
    assert WorkerOptions(parallel={"CUDA": 1}).parallel_of(recs["eels-mlp"]) == DEFAULT_PARALLEL
    assert WorkerOptions(parallel=4).parallel_of(recs["eels-mlp"]) == 4
    pca = PCAAnalyzer(k=2)
    assert WorkerOptions(parallel={"CPU": 3, "CUDA": 1}).parallel_of(pca) == 3  # analyzers run on CPU
    manager = ScanManager(recs, {"pca": pca}, on_result=lambda *a: None,
                          workers=WorkerOptions(parallel={"CPU": 3, "CUDA": 1}))
    # what the workers got (pca then keeps to its own max_parallel, as with a plain int)
    assert manager.workers["eels-mlp"].parallel == 3
    assert manager.workers["pca"].parallel == min(3, pca.max_parallel or 3)


# --------------------------------------------------------------------------- log, status, the CLI


def test_the_warning_is_logged_once_per_load_not_per_model(caplog):
    with caplog.at_level(logging.WARNING, logger="scanlens.pipeline.loading"):
        recs = load_recognizers(MODEL_DIR, threads=1, providers=["CUDA", "CPU"])
    assert len(recs) >= 2 and all(r.model.warnings == [CUDA_FALLBACK] for r in recs.values())
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [CUDA_FALLBACK]


async def test_status_of_a_running_server_names_providers_and_the_fallback():
    settings = loopback_settings(MODEL_DIR, models=["eels-mlp", "stem-unet"], providers=["CUDA", "CPU"],
                                 inference_parallel={"CPU": 1, "CUDA": 2})
    async with serving(settings) as server:
        async with Control(server.endpoints["control"]) as ctl:
            status = await ctl.status()
        assert {n: w.parallel for n, w in server.scans.workers.items()} == {"eels-mlp": 1, "stem-unet": 1, "pca": 1}
    assert status["providers"] == {"eels-mlp": ["CPU"], "stem-unet": ["CPU"]}
    assert status["provider_warnings"] == [CUDA_FALLBACK]  # once, not once per model
    Status.model_validate(status)


async def test_status_without_fallback_has_no_warnings(settings):
    async with serving(settings) as server:
        status = server.status()
    assert status.providers == {"band": ["CPU"]} and status.provider_warnings == []


async def test_serve_with_only_an_unavailable_provider_exits_with_one_line(tmp_path, model_dir):
    from scanlens.testing import run_cli_result

    result = await run_cli_result(*SERVE, "--model-dir", str(model_dir), "--provider", "CUDA",
                                  "--ingest", "tcp://127.0.0.1:0", "--publish", "tcp://127.0.0.1:0",
                                  "--control", "tcp://127.0.0.1:0", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: execution provider CUDA is not available in this onnxruntime build "
                               "(available: CPU): install onnxruntime-gpu"), lines[0]


async def test_serve_with_cuda_then_cpu_starts_and_warns(tmp_path, model_dir):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *SERVE, "--model-dir", str(model_dir), "--provider", "CUDA", "--provider", "CPU",
        "--ingest", "tcp://127.0.0.1:0", "--publish", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE)
    try:
        lines: list[str] = []
        async with asyncio.timeout(60):
            while not (m := re.search(r"control (tcp://\S+);", lines[-1] if lines else "")):
                line = (await proc.stderr.readline()).decode()
                assert line, "serve exited before binding:\n" + "".join(lines)
                lines.append(line)
        warned = [ln for ln in lines if " WARNING " in ln]
        assert len(warned) == 1 and warned[0].rstrip().endswith(CUDA_FALLBACK), lines
        async with Control(m.group(1)) as ctl:
            assert (await ctl.status())["provider_warnings"] == [CUDA_FALLBACK]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --------------------------------------------------------------------------- I/O binding for frames


@pytest.fixture(scope="module")
def stem():
    rec = open_recognizer(STEM, threads=1)
    assert isinstance(rec, FrameRecognizer) and rec.modality == "haadf"
    return rec


def test_io_binding_gives_bitwise_the_outputs_of_run(stem):
    rng = np.random.default_rng(7)
    lattice = np.array([(x, y) for y in range(6, 60, 11) for x in range(5, 76, 11)], np.float32)
    frame = render_frame((64, 80), lattice, np.array([[27.0, 28.0]])) + rng.normal(0, 0.05, (64, 80))
    frame = ((frame - frame.mean()) / frame.std()).astype(np.float32)
    names = stem._output_names
    assert names == ["probabilities", "novelty"]  # both outputs bound, in order
    for batch in (frame[None, None], np.stack([frame, frame[::-1]])[:, None]):
        plain = stem.model.run(names, batch)
        bound = stem.model.run_bound(names, batch)
        assert len(bound) == len(plain) == 2
        for a, b in zip(plain, bound):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            assert a.tobytes() == b.tobytes()
    assert np.ptp(plain[0]) > 0.5  # a real segmentation, not a constant both paths could agree on


def test_frame_recognizers_run_through_the_io_binding(stem, monkeypatch):
    img = np.zeros((40, 40), np.float32)
    expected = stem.segment(img)

    def no_plain_run(*args, **kwargs):
        raise AssertionError("a frame recognizer must use run_bound")

    monkeypatch.setattr(stem.model, "run", no_plain_run)
    assert np.array_equal(stem.segment(img), expected)
