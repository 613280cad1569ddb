"""Configuration layering, and `scanlens serve` as a real process: starts, answers, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from pydantic import ValidationError

from scanlens.app.config import InsecureBindError, check_binds, load_settings, unauthenticated_binds
from scanlens.client import Control
from scanlens.testing import serve_process

DEPLOY_TOML = Path(__file__).resolve().parents[1] / "deploy" / "scanlens.toml"


def test_deploy_config_loads():
    s = load_settings(DEPLOY_TOML)
    assert s.ingest == "tcp://0.0.0.0:5555" and s.queue_pixels == 65536 and s.scan_timeout_s == 60.0


def test_deploy_config_authenticates_every_non_loopback_bind():
    s = load_settings(DEPLOY_TOML)
    assert s.curve_secret_key == Path("/etc/scanlens/keys/server.key_secret")
    assert s.curve_allowed_keys == Path("/etc/scanlens/keys/clients")
    assert not s.network_isolated
    assert check_binds(s) == {} and unauthenticated_binds(s) == {}
    # it passes the start-up check only because the keys are set: without them all three binds are refused
    bare = s.model_copy(update={"curve_secret_key": None, "curve_allowed_keys": None})
    assert set(unauthenticated_binds(bare)) == {"ingest", "publish", "control"}
    with pytest.raises(InsecureBindError, match="refusing to bind ingest tcp://0.0.0.0:5555"):
        check_binds(bare)


def test_layering_file_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('ingest = "tcp://127.0.0.1:7000"\nmax_batch_pixels = 100\nscan_timeout_s = 5\n')
    monkeypatch.setenv("SCANLENS_MAX_BATCH_PIXELS", "200")
    s = load_settings(cfg, scan_timeout_s=9.0, publish=None)
    assert s.ingest == "tcp://127.0.0.1:7000"  # file
    assert s.max_batch_pixels == 200  # env beats file
    assert s.scan_timeout_s == 9.0  # flag beats both
    assert s.publish == "tcp://127.0.0.1:5556"  # None = not given: default


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_batch_pixels = 0\nunknown_key = 1\n")
    with pytest.raises(ValidationError) as info:
        load_settings(cfg)
    assert "max_batch_pixels" in str(info.value) and "unknown_key" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_settings(tmp_path / "nope.toml")


async def test_serve_process_starts_answers_and_stops(model_dir, tmp_path):
    async with serve_process(model_dir, tmp_path) as served:
        async with Control(served.endpoints["control"]) as ctl:
            status = await ctl.status()
        assert status["recognizers"] == ["band", "pca"]
        served.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = await served.proc.stderr.read()
            assert await served.proc.wait() == 0
        assert b"scanlens stopped" in rest
