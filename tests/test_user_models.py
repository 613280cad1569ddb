"""Trained models go to the user model directory, never silently over or beside a shipped model of the
same name; the service loads that directory next to the shipped one and refuses, at start-up, a user model
that would shadow a shipped name. The user directory is the test's own (``SCANLENS_USER_MODEL_DIR``, set
by the autouse fixture in conftest.py); nothing here writes into the package or the real home."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from scanlens.app.cli import app
from scanlens.app.config import Settings
from scanlens.app.server import Server
from scanlens.model_files import MODEL_DIR, user_model_dir
from scanlens.pipeline import ModelError
from scanlens.protocol.model_card import card_from_metadata
from scanlens.testing import (LOOPBACK, band_axis, band_spectra, connected, run_cli_result, serving,
                              wait_for_summary, write_band_model)

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def shipped_state() -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(MODEL_DIR.glob("*.onnx"))}


def card_name(path: Path) -> str:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return card_from_metadata({p.key: p.value for p in proto.metadata_props}).name


@pytest.fixture
def fake_eels_training(monkeypatch) -> list[Path]:
    """`scanlens train eels` without torch: the 'training' writes a small real ONNX model named like the
    shipped one (eels-mlp) to where it is told; returns the paths it was told."""
    calls: list[Path] = []

    def train(out: Path, *, quick: bool, seed: int, progress: Any) -> dict[str, float]:
        calls.append(Path(out))
        if Path(out).parent != MODEL_DIR:  # never write into the package, even when a test asks for it
            write_band_model(Path(out), name="eels-mlp")
        return {"phase_accuracy": 0.5}

    monkeypatch.setitem(sys.modules, "scanlens.models.eels", types.SimpleNamespace(train=train))
    return calls


def test_the_user_model_directory_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCANLENS_USER_MODEL_DIR")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert user_model_dir() == tmp_path / "home" / ".local" / "share" / "scanlens" / "models"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert user_model_dir() == tmp_path / "home" / ".local" / "share" / "scanlens" / "models"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_model_dir() == tmp_path / "data" / "scanlens" / "models"
    monkeypatch.setenv("SCANLENS_USER_MODEL_DIR", str(tmp_path / "mine"))
    assert user_model_dir() == tmp_path / "mine"
    assert Settings().user_model_dir == tmp_path / "mine"  # the service uses the same rule


def test_train_refuses_to_put_a_shipped_name_in_the_user_directory(fake_eels_training, user_model_dir):
    before = shipped_state()
    result = runner.invoke(app, ["train", "eels", "--quick"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 'eels-mlp' is the name of a shipped model"), result.output
    assert str(MODEL_DIR / "eels-mlp.onnx") in lines[0] and "--name" in lines[0] and "--replace-shipped" in lines[0]
    assert fake_eels_training == [] and not user_model_dir.exists() and shipped_state() == before


def test_train_writes_to_the_user_directory_under_its_own_name(fake_eels_training, user_model_dir):
    before = shipped_state()
    result = runner.invoke(app, ["train", "eels", "--quick", "--name", "eels-mine"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    out = user_model_dir / "eels-mine.onnx"
    assert fake_eels_training == [out] and f"wrote {out}" in " ".join(result.output.split())
    assert card_name(out) == "eels-mine"  # the card carries the new name
    assert shipped_state() == before


def test_a_shipped_model_is_replaced_only_on_request(fake_eels_training, tmp_path):
    result = runner.invoke(app, ["train", "eels", "--replace-shipped"])
    assert result.exit_code == 0, result.output
    assert fake_eels_training == [MODEL_DIR / "eels-mlp.onnx"]  # (the fake does not write there)
    for argv, words in [
        (["--out", str(MODEL_DIR / "eels-mlp.onnx")], "is in the shipped models' directory"),
        (["--out", str(MODEL_DIR / "other.onnx")], "is in the shipped models' directory"),
        (["--replace-shipped", "--name", "nope"], "there is no shipped model 'nope' to replace"),
        (["--replace-shipped", "--out", str(tmp_path / "x.onnx")], "give --out or --replace-shipped, not both"),
    ]:
        result = runner.invoke(app, ["train", "eels", *argv])
        assert result.exit_code == 2 and words in result.output, (argv, result.output)
        assert "Traceback" not in result.output
    assert len(fake_eels_training) == 1
    result = runner.invoke(app, ["train", "eels", "--out", str(tmp_path / "elsewhere.onnx")])  # anywhere else: fine
    assert result.exit_code == 0 and fake_eels_training[-1] == tmp_path / "elsewhere.onnx"


def test_one_frame_run_from_the_repository_root_writes_to_the_user_directory(monkeypatch, tmp_path,
                                                                             user_model_dir):
    told: list[Path] = []

    def train_one_frame(frame, labels, pixel_size_nm, out, *, name, steps, seed, progress, threads):
        told.append(Path(out))
        write_band_model(Path(out), name=name)
        return {"training_frame_atom_f1": 1.0}

    monkeypatch.setitem(sys.modules, "scanlens.models.one_frame", types.SimpleNamespace(
        train_one_frame=train_one_frame, STEPS=150, QUICK_STEPS=6))
    np.save(tmp_path / "frame.npy", np.zeros((8, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros((8, 8), np.uint8))
    monkeypatch.chdir(ROOT)
    before = shipped_state()
    result = runner.invoke(app, ["train", "one-frame", "--image", str(tmp_path / "frame.npy"), "--labels",
                                 str(tmp_path / "labels.npy"), "--pixel-size-nm", "0.02", "--quick"])
    assert result.exit_code == 0, result.output
    assert told == [user_model_dir / "one-frame-unet.onnx"] and told[0].is_file()
    assert shipped_state() == before
    # a one-frame model named like a shipped one is refused the same way
    result = runner.invoke(app, ["train", "one-frame", "--image", str(tmp_path / "frame.npy"), "--labels",
                                 str(tmp_path / "labels.npy"), "--pixel-size-nm", "0.02", "--name", "stem-unet"])
    assert result.exit_code == 2 and "'stem-unet' is the name of a shipped model" in result.output
    assert len(told) == 1


async def test_the_service_loads_user_models_next_to_the_shipped_ones(user_model_dir):
    user_model_dir.mkdir()
    write_band_model(user_model_dir / "band.onnx")
    settings = Settings(ingest=LOOPBACK, publish=LOOPBACK, control=LOOPBACK, inference_threads=1,
                        status_interval_s=0.05)
    assert settings.model_dir == MODEL_DIR and settings.user_model_dir == user_model_dir
    async with serving(settings) as server, connected(server) as (inst, sub, ctl):
        models = await ctl.models()
        assert {"band", "eels-mlp", "stem-unet"} <= set(models)
        truth = np.array([0, 1, 2, 1])
        async with inst.scan("user-1", "eels", (1, 4), band_axis(), recognizers=["band"]) as scan:
            await scan.send_line(0, band_spectra(truth))
        summary = await wait_for_summary(sub, "user-1", timeout=30)
    assert summary.state == "complete" and set(summary.recognizers) == {"band"}
    assert str(user_model_dir / "band.onnx") in " ".join(runner.invoke(app, ["models"], terminal_width=300).output.split())


async def test_a_user_model_with_a_shipped_name_stops_the_service_at_start(user_model_dir):
    user_model_dir.mkdir()
    clash = write_band_model(user_model_dir / "my-eels.onnx", name="eels-mlp")
    with pytest.raises(ModelError) as info:
        Server(Settings(ingest=LOOPBACK, publish=LOOPBACK, control=LOOPBACK, inference_threads=1))
    message = str(info.value)
    assert str(MODEL_DIR / "eels-mlp.onnx") in message and str(clash) in message and "--name" in message
    # the operator's view: `scanlens serve` and `scanlens models` say it in one line and exit 2
    serve = await run_cli_result("-c", "from scanlens.app.cli import main; main()", "serve", "--ingest",
                                 LOOPBACK, "--publish", LOOPBACK, "--control", LOOPBACK, timeout=90)
    assert serve.returncode == 2
    assert serve.stderr.strip().splitlines()[-1] == f"error: {message}" and "Traceback" not in serve.stderr
    listed = runner.invoke(app, ["models"])
    assert listed.exit_code == 2 and listed.output.strip() == f"error: {message}"
