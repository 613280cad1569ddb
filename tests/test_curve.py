"""CurveZMQ authentication against real sockets on loopback: unknown keys refused and counted per socket,
allowed keys served on all three sockets, scans owned by the key that started them, the secure default
(no unauthenticated non-loopback bind), and `scanlens keys`.

Refused clients never get an answer, so every wait on one is short and bounded; the counters are
polled with a deadline, since ZeroMQ reports nothing to the refused side.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from pydantic import ValidationError
from typer.testing import CliRunner

from scanlens.app.cli import app
from scanlens.app.config import InsecureBindError, check_binds, load_settings
from scanlens.app.server import Server
from scanlens.client import Control, CurveClient, Instrument, KeyFileError, Subscriber, client_keys
from scanlens.protocol import topics
from scanlens.protocol.messages import Data, ScanEnd, ScanStart
from scanlens.testing import (band_axis, band_spectra, connected, data_frames, loopback_settings, send_band_scan,
                              serving, wait_for, wait_for_event, wait_for_summary)
from scanlens.transport import is_local_endpoint

runner = CliRunner()
SOCKETS = ("ingest", "publish", "control")


@dataclass
class Keys:
    dir: Path
    allowed: Path  # the directory of allowed client public keys

    def secret(self, name: str) -> Path:
        return self.dir / f"{name}.key_secret"

    def client(self, name: str) -> CurveClient:
        return CurveClient.from_files(self.secret(name), self.dir / "server.key")

    def z85(self, name: str) -> str:
        return zmq.auth.load_certificate(self.dir / f"{name}.key")[0].decode()


@pytest.fixture
def keys(tmp_path) -> Keys:
    """Pairs server, inst, other (both allowed) and stranger (not allowed)."""
    k = Keys(tmp_path / "keys", tmp_path / "clients")
    k.dir.mkdir()
    k.allowed.mkdir()
    for name in ("server", "inst", "other", "stranger"):
        zmq.auth.create_certificates(k.dir, name)
        k.secret(name).chmod(0o600)
    for name in ("inst", "other"):
        (k.allowed / f"{name}.key").write_bytes((k.dir / f"{name}.key").read_bytes())
    return k


@pytest.fixture
def curve_settings(model_dir, keys):
    return loopback_settings(model_dir, curve_secret_key=keys.secret("server"), curve_allowed_keys=keys.allowed)


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _start(scan_id: str, shape: tuple[int, int]) -> ScanStart:
    return ScanStart(scan_id=scan_id, modality="eels", shape=shape, axis=band_axis())


# --------------------------------------------------------------------------- (a) unknown keys


async def test_unknown_key_is_refused_on_all_three_sockets_and_counted(curve_settings, keys):
    async with serving(curve_settings) as srv:
        assert all(srv.counters[f"auth_refused.{s}"] == 0 for s in SOCKETS)
        stranger = keys.client("stranger")
        inst = Instrument(srv.endpoints["ingest"], linger_s=0, curve=stranger)
        sub = Subscriber(srv.endpoints["publish"], curve=stranger)
        ctl = Control(srv.endpoints["control"], curve=stranger)
        plain = Control(srv.endpoints["control"])  # no keys at all: the handshake cannot even start
        try:
            async with asyncio.timeout(2):
                await inst.send(_start("intruder", (2, 2)))
            with pytest.raises(TimeoutError):
                await ctl.request("status", timeout=0.3)
            with pytest.raises(TimeoutError):
                await plain.request("status", timeout=0.3)
            with pytest.raises(TimeoutError):
                await sub.recv(timeout=0.3)  # not even the heartbeat, sent every 50 ms
            await _until(lambda: all(srv.counters[f"auth_refused.{s}"] >= 1 for s in SOCKETS))
            assert srv.counters["messages_in"] == 0 and "intruder" not in srv.open_scans
        finally:
            for c in (inst, sub, ctl, plain):
                c.close()
        # the counters are in the status (and so in the heartbeat) an allowed client gets
        async with connected(srv, curve=keys.client("inst")) as (_, _, ctl):
            counters = (await ctl.status())["counters"]
        assert all(counters[f"auth_refused.{s}"] >= 1 for s in SOCKETS)
        assert counters.get("scans_started", 0) == 0


# --------------------------------------------------------------------------- (b) the right key


async def test_allowed_key_works_on_all_three_sockets(curve_settings, keys):
    truth = np.array([[0, 1, 2, 1], [2, 2, 0, 0], [1, 0, 1, 2]])
    async with serving(curve_settings) as srv:
        async with connected(srv, curve=keys.client("inst")) as (inst, sub, ctl):  # the subscriber is live
            await send_band_scan(inst, "s1", truth)
            summary = await wait_for_summary(sub, "s1")
            status = await ctl.status()
            snap = await ctl.snapshot("s1")
        assert summary.state == "complete" and summary.pixels_recognized == truth.size
        assert np.array_equal(snap.arrays["band/class"], truth)
        assert status["counters"]["scans_started"] == 1
        assert all(srv.counters[f"auth_refused.{s}"] == 0 for s in SOCKETS)
        # the scan belongs to the key that started it: the ZAP user id is the client's z85 public key
        assert srv.scans.closed_scans["s1"].owner == keys.z85("inst")


async def test_without_keys_there_is_no_owner(server, clients):
    inst, sub, _ = clients
    await send_band_scan(inst, "plain", np.zeros((1, 2), int))
    assert (await wait_for_summary(sub, "plain")).state == "complete"
    assert server.scans.closed_scans["plain"].owner is None
    assert not any(k.startswith("auth_refused") for k in server.counters)


# --------------------------------------------------------------------------- (c) another key's data


async def test_another_keys_data_and_scan_end_are_refused_and_reported(curve_settings, keys):
    truth = np.array([[0, 1, 2, 0, 1], [2, 2, 0, 0, 1], [1, 0, 1, 2, 2], [0, 0, 1, 1, 2]])
    async with serving(curve_settings) as srv:
        async with connected(srv, curve=keys.client("inst")) as (inst, sub, _), \
                Instrument(srv.endpoints["ingest"], linger_s=0, curve=keys.client("other")) as other:
            stream = inst.scan("s1", "eels", truth.shape, band_axis())
            await stream.__aenter__()
            for row in (0, 1):
                await stream.send_line(row, band_spectra(truth[row]))
            await wait_for(sub, "scan_started", scan_id="s1")
            # the other (allowed) key: a line with the owner's next seq, an undecodable one, and a scan_end
            line = band_spectra(truth[2])
            await other.send(Data(scan_id="s1", seq=2, row=2, shape=line.shape, dtype="float32"), [line])
            await other.sock.send_multipart(data_frames("s1", 3, 3, band_spectra(truth[3]), dtype="float16"))
            await other.send(ScanEnd(scan_id="s1", n_messages=1))
            foreign_data = await wait_for(sub, "event", scan_id="s1", where=lambda h: h.code == "forbidden")
            bad = await wait_for_event(sub, "bad_message", scan_id="s1")
            foreign_end = await wait_for_event(sub, "forbidden", scan_id="s1")
            assert foreign_data.topic == topics.event_topic("s1")
            assert foreign_data.header.seq == 2 and "did not start it" in foreign_data.header.reason
            assert bad.seq == 3 and foreign_end.seq is None and "scan_end" in foreign_end.reason
            assert "s1" in srv.open_scans  # the foreign scan_end closed nothing
            # the owner finishes its scan: every seq its own, nothing rejected or lost
            for row in (2, 3):
                await stream.send_line(row, band_spectra(truth[row]))
            await stream.end()
            summary = await wait_for_summary(sub, "s1")
        assert summary.state == "complete", summary
        assert summary.messages_sent == summary.messages_received == 4
        assert summary.pixels_recognized == truth.size and not summary.rejected and not summary.lost
        assert srv.counters["foreign_messages"] == 2 and srv.counters["event.forbidden"] == 2


# --------------------------------------------------------------------------- (d) the secure default


@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:0", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/scanlens.ipc", True), ("inproc://scanlens", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://[::]:5555", False),
    ("tcp://192.168.1.7:5555", False), ("tcp://eth0:5555", False), ("tcp://scope.lab:5555", False),
    ("ws://127.0.0.1:5555", False), ("pgm://eth0;239.192.1.1:5555", False), ("nonsense", False),
])
def test_which_endpoints_are_local(endpoint, local):
    assert is_local_endpoint(endpoint) is local


def test_non_loopback_bind_is_refused_without_keys(model_dir):
    settings = loopback_settings(model_dir, publish="tcp://0.0.0.0:0")
    with pytest.raises(InsecureBindError) as info:
        Server(settings)  # before anything is bound or loaded
    message = str(info.value)
    assert "publish tcp://0.0.0.0:0" in message and "curve_secret_key" in message
    assert "network_isolated = true" in message and "\n" not in message


def test_serve_refuses_an_unauthenticated_non_loopback_bind_in_one_line(model_dir):
    out = subprocess.run([sys.executable, "-c", "from scanlens.app.cli import main; main()", "serve",
                          "--ingest", "tcp://*:0", "--publish", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
                          "--model-dir", str(model_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
    assert "refusing to bind ingest tcp://*:0" in out.stderr and "Traceback" not in out.stderr


async def test_network_isolated_binds_all_interfaces_and_warns(model_dir, caplog):
    settings = loopback_settings(model_dir, ingest="tcp://0.0.0.0:0", network_isolated=True)
    with caplog.at_level(logging.WARNING, logger="scanlens.app.server"):
        async with serving(settings) as srv:
            port = srv.endpoints["ingest"].rsplit(":", 1)[1]
            assert srv.endpoints["ingest"] == f"tcp://0.0.0.0:{port}"
            async with connected(srv) as (_, sub, _), Instrument(f"tcp://127.0.0.1:{port}", linger_s=0) as inst:
                await send_band_scan(inst, "iso", np.array([[0, 1]]))
                assert (await wait_for_summary(sub, "iso")).state == "complete"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("network_isolated" in m and "tcp://0.0.0.0" in m and "WITHOUT authentication" in m for m in warned)


def test_curve_keys_come_together_and_must_be_readable(model_dir, keys, tmp_path):
    with pytest.raises(ValidationError, match="curve_allowed_keys"):
        loopback_settings(model_dir, curve_secret_key=keys.secret("server"))
    with pytest.raises(ValidationError, match="curve_secret_key"):
        loopback_settings(model_dir, curve_allowed_keys=keys.allowed)
    with pytest.raises(KeyFileError, match="does not exist"):
        Server(loopback_settings(model_dir, curve_secret_key=tmp_path / "nope.key_secret",
                                 curve_allowed_keys=keys.allowed))
    with pytest.raises(KeyFileError, match="holds no secret key"):
        Server(loopback_settings(model_dir, curve_secret_key=keys.dir / "server.key", curve_allowed_keys=keys.allowed))
    with pytest.raises(KeyFileError, match="not a directory"):
        Server(loopback_settings(model_dir, curve_secret_key=keys.secret("server"),
                                 curve_allowed_keys=tmp_path / "missing"))
    # with keys, a non-loopback bind is allowed: authentication is on
    assert check_binds(loopback_settings(model_dir, ingest="tcp://*:0", curve_secret_key=keys.secret("server"),
                                         curve_allowed_keys=keys.allowed)) == {}
    # clients: both files or neither
    assert client_keys(None, None) is None
    with pytest.raises(ValueError, match="--server-key"):
        client_keys(keys.secret("inst"), None)
    assert client_keys(keys.secret("inst"), keys.dir / "server.key").public_key.decode() == keys.z85("inst")


async def test_a_failed_start_with_curve_leaves_nothing_open(model_dir, keys):
    settings = loopback_settings(model_dir, control="tcp://no-such-interface:0", curve_secret_key=keys.secret("server"),
                                 curve_allowed_keys=keys.allowed)
    with pytest.raises(OSError, match="cannot bind tcp://no-such-interface:0"):
        async with serving(settings):
            pass
    # the autouse leak check: the ZAP socket, the bound sockets and the context are all closed


def test_curve_settings_from_the_environment(monkeypatch, keys):
    monkeypatch.setenv("SCANLENS_CURVE_SECRET_KEY", str(keys.secret("server")))
    monkeypatch.setenv("SCANLENS_CURVE_ALLOWED_KEYS", str(keys.allowed))
    s = load_settings(None, ingest="tcp://0.0.0.0:5555")
    assert s.curve_enabled and check_binds(s) == {}


# --------------------------------------------------------------------------- (e) scanlens keys


def test_keys_create_and_list(tmp_path):
    d = tmp_path / "new" / "keys"
    made = runner.invoke(app, ["keys", "create", "server", "--dir", str(d)])
    assert made.exit_code == 0, made.output
    public, secret = d / "server.key", d / "server.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(d.stat().st_mode) == 0o700
    z85, secret_key = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (z85, None) and secret_key is not None
    assert z85.decode() in made.output
    assert sorted(p.name for p in d.iterdir()) == ["server.key", "server.key_secret"]  # no staging left over

    before = secret.read_bytes()
    again = runner.invoke(app, ["keys", "create", "server", "--dir", str(d)])
    assert again.exit_code == 1 and len(again.output.strip().splitlines()) == 1
    assert "already exist" in again.output and "not overwritten" in again.output
    assert secret.read_bytes() == before

    assert runner.invoke(app, ["keys", "create", "inst1", "--dir", str(d)]).exit_code == 0
    (d / "scope.key").write_bytes((d / "inst1.key").read_bytes())  # a public key alone: an allowed client's
    listed = runner.invoke(app, ["keys", "list", "--dir", str(d)], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split()[1:] for line in listed.output.strip().splitlines()[1:]}
    inst1 = zmq.auth.load_certificate(d / "inst1.key")[0].decode()
    assert rows == {"inst1": [inst1, "yes"], "scope": [inst1, "no"], "server": [z85.decode(), "yes"]}

    bad = runner.invoke(app, ["keys", "create", "../x", "--dir", str(d)])
    assert bad.exit_code == 2 and "not a key name" in bad.output
    empty = runner.invoke(app, ["keys", "list", "--dir", str(tmp_path)])
    assert empty.exit_code == 0 and "no keys" in empty.output


async def test_keys_made_by_the_cli_work_with_the_service_and_status(tmp_path, model_dir):
    d = tmp_path / "k"
    for name in ("server", "scope"):
        assert runner.invoke(app, ["keys", "create", name, "--dir", str(d)]).exit_code == 0
    allowed = tmp_path / "clients"
    allowed.mkdir()
    (allowed / "scope.key").write_bytes((d / "scope.key").read_bytes())
    s = loopback_settings(model_dir, curve_secret_key=d / "server.key_secret", curve_allowed_keys=allowed)
    async with serving(s) as srv:
        async with Control(srv.endpoints["control"], curve=client_keys(d / "scope.key_secret", d / "server.key")) as c:
            assert (await c.request("status", timeout=5)).result["counters"]["auth_refused.control"] == 0
        # `scanlens status` with the keys (in a thread: it runs its own event loop)
        argv = ["status", "--control", srv.endpoints["control"], "--client-key", str(d / "scope.key_secret"),
                "--server-key", str(d / "server.key"), "--timeout", "5"]
        ok = await asyncio.to_thread(runner.invoke, app, argv)
        assert ok.exit_code == 0 and '"auth_refused.control": 0' in ok.output, ok.output
        refused = await asyncio.to_thread(runner.invoke, app, [*argv[:3], "--client-key", str(d / "server.key_secret"),
                                                               "--server-key", str(d / "server.key"), "--timeout", "0.3"])
        assert refused.exit_code == 1 and "allowed keys" in refused.output
        half = await asyncio.to_thread(runner.invoke, app, [*argv[:5]])
        assert half.exit_code == 2 and "--server-key" in half.output


async def test_shared_memory_with_curve_honours_only_the_scans_owner(curve_settings, keys):
    """With CURVE on, a ring's lines are recognized for the key that started the scan; another allowed key
    can neither start a scan on that ring nor send into the scan (docs/protocol.md §3.6)."""
    truth = np.random.default_rng(1).integers(0, 3, size=(4, 160))
    async with serving(curve_settings) as server:
        async with Subscriber(server.endpoints["publish"], curve=keys.client("inst")) as sub, \
                Instrument(server.endpoints["ingest"], curve=keys.client("inst"), shm=True) as inst, \
                Instrument(server.endpoints["ingest"], curve=keys.client("other"), shm=False) as other:
            await sub.wait_ready()
            await send_band_scan(inst, "owned", truth)
            summary = await wait_for_summary(sub, "owned", timeout=20)
            assert (summary.state, summary.n_lost, summary.pixels_recognized) == ("complete", 0, truth.size)
            assert server.counters["shm_messages"] == len(truth)
            token = inst.ring.token
            await other.send(ScanStart(scan_id="stolen", modality="eels", shape=(2, 160), axis=band_axis(), ring=token))
            event = await wait_for_event(sub, "scan_rejected", scan_id="stolen")
            assert "belongs to another sender" in event.reason
            async with inst.scan("mine", "eels", (2, 160), band_axis()) as scan:
                await scan.send_line(0, band_spectra(truth[0]))
                # The two senders are separate connections, which the service does not order between: wait until
                # the owner's scan_start has been taken before the intruder sends.
                await wait_for(sub, "scan_started", scan_id="mine", timeout=20)
                await other.send(Data(scan_id="mine", seq=1, row=1, shape=(160, band_axis().size), dtype="float32",
                                      slot=0))
                await wait_for_event(sub, "forbidden", scan_id="mine")
                await scan.send_line(1, band_spectra(truth[1]))
            summary = await wait_for_summary(sub, "mine", timeout=20)
            assert (summary.state, summary.n_lost, summary.rejected) == ("complete", 0, [])
            assert server.counters["shm_messages"] == len(truth) + 2
