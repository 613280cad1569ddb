"""The Prometheus endpoint (issue 13; docs/operations.md, "Metrics (Prometheus)"): real sockets on loopback, a
shipped ONNX model, simulated EELS lines, scraped with urllib and parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from scanlens.app.cli import app
from scanlens.app.config import InsecureBindError, Settings, check_binds, load_settings, unauthenticated_binds
from scanlens.app.server import Server
from scanlens.model_files import MODEL_DIR
from scanlens.pipeline.stats import LATENCY_BUCKETS_MS
from scanlens.sim.eels import EELSConfig, EELSSample
from scanlens.testing import connected, loopback_settings, serving

Samples = dict[tuple[str, frozenset], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.status == 200
        return reply.read().decode()


async def scrape(url: str) -> Samples:
    """Every sample of one scrape, by (sample name, labels); fetched in a thread so the server keeps running."""
    text = await asyncio.to_thread(_get, url)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counter(samples: Samples, name: str) -> float:
    return samples.get(("scanlens_counter_total", frozenset({("counter", name)})), 0.0)


def histogram(samples: Samples, recognizer: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative (le, count) pairs in order, count, sum) of one recognizer's latency histogram."""
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                     if name == "scanlens_latency_ms_bucket" and dict(labels)["recognizer"] == recognizer)
    key = frozenset({("recognizer", recognizer)})
    return buckets, samples[("scanlens_latency_ms_count", key)], samples[("scanlens_latency_ms_sum", key)]


async def scrape_until(url: str, done, timeout: float = 10.0) -> Samples:
    """Scrape until ``done(samples)`` (the snapshot is refreshed every status interval)."""
    deadline = time.monotonic() + timeout
    while not done(samples := await scrape(url)):
        assert time.monotonic() < deadline, "metrics did not move in time"
        await asyncio.sleep(0.05)
    return samples


async def test_metrics_move_with_a_scan_of_real_eels_lines():
    sample = EELSSample(EELSConfig(rows=12, cols=32, seed=5))
    rows, cols = sample.cfg.rows, sample.cfg.cols
    settings = loopback_settings(MODEL_DIR, models=["eels-mlp"], metrics="127.0.0.1:0")
    async with serving(settings) as server, connected(server) as (inst, sub, _):
        url = server.endpoints["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics") and ":0/" not in url
        before = await scrape(url)
        assert counter(before, "messages_in") == 0
        assert before[("scanlens_open_scans", frozenset())] == 0
        assert before[("scanlens_memory_budget_bytes", frozenset())] == settings.memory_budget_bytes
        buckets, count, total = histogram(before, "eels-mlp")
        assert [le for le, _ in buckets] == [*LATENCY_BUCKETS_MS, float("inf")]
        assert count == total == 0

        async with inst.scan("m1", "eels", (rows, cols), sample.cfg.axis, recognizers=["eels-mlp"]) as scan:
            for row in range(rows // 2):
                await scan.send_line(row, sample.line(row))
            during = await scrape_until(url, lambda s: counter(s, "messages_in") >= 1 + rows // 2)
            assert during[("scanlens_open_scans", frozenset())] == 1
            assert during[("scanlens_scans_started_total", frozenset())] == 1
            for row in range(rows // 2, rows):
                await scan.send_line(row, sample.line(row))
        result = await sub.collect_scan("m1", timeout=60)
        assert result.summary.state == "complete"

        after = await scrape_until(url, lambda s: histogram(s, "eels-mlp")[1] == rows
                                   and s.get(("scanlens_scans_closed_total", frozenset({("state", "complete")}))) == 1)
        assert counter(after, "messages_in") == rows + 2  # scan_start, the lines, scan_end
        assert counter(after, "pixels_in") == rows * cols
        assert after[("scanlens_open_scans", frozenset())] == 0
        assert after[("scanlens_memory_bytes", frozenset())] > 0
        buckets, count, total = histogram(after, "eels-mlp")
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and counts[-1] == count == result.summary.messages_received
        assert total > 0 and result.summary.latency_ms_p50 is not None
        assert histogram(after, "pca")[1] == 0  # only the recognizer the scan asked for


async def test_no_endpoint_without_metrics_and_each_server_its_own(model_dir):
    async with serving(loopback_settings(model_dir)) as plain:
        assert plain.metrics is None and "metrics" not in plain.endpoints
    settings = loopback_settings(model_dir, metrics="127.0.0.1:0")
    async with serving(settings) as a, serving(settings) as b:  # private registries: no clash
        urls = a.endpoints["metrics"], b.endpoints["metrics"]
        assert urls[0] != urls[1]
        for url in urls:
            assert ("scanlens_latency_ms_count", frozenset({("recognizer", "band")})) in await scrape(url)
    for url in urls:  # stopped with its server
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(_get, url)


def test_metrics_on_another_host_needs_network_isolated(model_dir):
    with pytest.raises(InsecureBindError, match="refusing to bind metrics http://0.0.0.0:9464 without "
                                                "authentication .* SSH tunnel"):
        Server(loopback_settings(model_dir, metrics="0.0.0.0:9464"))
    # CURVE keys do not cover HTTP: the metrics endpoint is exposed with them too
    keyed = Settings(curve_secret_key=Path("s.key_secret"), curve_allowed_keys=Path("clients"), metrics="0.0.0.0:1")
    assert unauthenticated_binds(keyed) == {"metrics": "http://0.0.0.0:1"}
    assert check_binds(keyed.model_copy(update={"network_isolated": True})) == {"metrics": "http://0.0.0.0:1"}
    assert unauthenticated_binds(Settings(metrics="localhost:9464")) == {}
    assert unauthenticated_binds(Settings(metrics="[::1]:9464")) == {}


def test_metrics_setting_from_file_and_its_form(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('metrics = "127.0.0.1:9464"\n')
    assert load_settings(cfg).metrics == "127.0.0.1:9464"
    assert Settings().metrics is None
    for bad in ("9464", "127.0.0.1", "127.0.0.1:http", ":9464", "127.0.0.1:70000"):
        with pytest.raises(ValidationError, match="metrics must be HOST:PORT"):
            Settings(metrics=bad)


def test_serve_refuses_exposed_metrics_in_one_line(model_dir):
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["serve", "--help"], terminal_width=200).output.split())
    assert "--metrics" in help_text and "HOST:PORT" in help_text
    result = runner.invoke(app, ["serve", "--model-dir", str(model_dir), "--metrics", "0.0.0.0:9464"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to bind metrics http://0.0.0.0:9464")
