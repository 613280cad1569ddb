"""Ingest throughput with CurveZMQ authentication on versus off, measured in the same run.

    python bench/curve.py [--model-dir service/model_files --model eels-mlp | --channels 2048] [--line 256]
    python bench/curve.py --spectra 8192 --repeats 1 --json      # small run, ~5 s

For each repeat, twice (off, then on): the service in this process, a sender in its own process
streaming ``--spectra`` spectra on the model's axis in lines of ``--line`` spectra as fast as the
service takes them (bench/sender.py), and a subscriber to the scan's summary only. "on": the three
sockets are CURVE servers, the sender and the subscriber CURVE clients with allowed keys (made for
the run in a temporary directory), so every message is encrypted, authenticated and decrypted.
``--channels N`` measures the reference MLP ``N -> 128 -> 64 -> 4`` of docs/performance.md instead
(larger lines: more bytes to encrypt per spectrum).
Throughput is the summary's pixels recognized / duration (scan_start to summary), in spectra/s and
lines/s; the best of the repeats of each mode is compared: ``ratio`` = on / off.

Prints a table, or one JSON object with --json. Numbers depend on the machine; compare the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import zmq.auth

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scanlens.app.config import Settings  # noqa: E402
from scanlens.app.server import running  # noqa: E402
from scanlens.client import Subscriber, client_keys  # noqa: E402
from scanlens.model_files import MODEL_DIR  # noqa: E402
from scanlens.pipeline import load_recognizers  # noqa: E402
from scanlens.protocol import topics  # noqa: E402
from scanlens.protocol.messages import ScanSummary  # noqa: E402


def make_keys(directory: Path) -> dict[str, Path]:
    """A server pair, a sender pair (allowed) in ``directory``; the allowed directory holds the sender's key."""
    allowed = directory / "clients"
    allowed.mkdir()
    for name in ("server", "bench"):
        zmq.auth.create_certificates(directory, name)
        (directory / f"{name}.key_secret").chmod(0o600)
    (allowed / "bench.key").write_bytes((directory / "bench.key").read_bytes())
    return {"server_secret": directory / "server.key_secret", "server_public": directory / "server.key",
            "client_secret": directory / "bench.key_secret", "allowed": allowed}


async def one_scan(settings: Settings, axis, rows: int, cols: int, scan_id: str, keys: dict[str, Path] | None) -> dict:
    curve = client_keys(keys["client_secret"], keys["server_public"]) if keys else None
    key_args = [str(keys["client_secret"]), str(keys["server_public"])] if keys else []
    async with running(settings) as server:
        async with Subscriber(server.endpoints["publish"], topics_=[topics.scan_topic(scan_id, topics.SUMMARY)],
                              curve=curve) as sub:
            await sub.wait_ready()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "sender.py"), server.endpoints["ingest"], scan_id, str(rows),
                str(cols), str(axis.size), str(axis.offset), str(axis.scale), axis.units, "0", *key_args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                s = (await sub.recv(timeout=300)).header
            finally:
                out, err = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(err.decode())
            assert isinstance(s, ScanSummary), s
        refused = {k: v for k, v in server.counters.items() if k.startswith("auth_refused")}
    if s.state != "complete":
        raise RuntimeError(f"scan {scan_id} ended {s.state}: lost {len(s.lost)}, rejected {len(s.rejected)}")
    return {"spectra_per_s": s.pixels_recognized / s.duration_s, "lines_per_s": rows / s.duration_s,
            "duration_s": s.duration_s, "pixels": s.pixels_recognized, "latency_ms_p99": s.latency_ms_p99,
            "auth_refused": refused, "sender": json.loads(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="directory of the recognizer (default: shipped)")
    p.add_argument("--model", default="eels-mlp", help="recognizer name in --model-dir (default eels-mlp)")
    p.add_argument("--channels", type=int, default=None, help="measure the reference MLP with this many channels")
    p.add_argument("--spectra", type=int, default=262_144, help="spectra per measured scan")
    p.add_argument("--line", type=int, default=256, help="spectra per data message (one scan line)")
    p.add_argument("--repeats", type=int, default=5,
                   help="scans per mode, alternating off and on; the best counts (the machine is shared: take several)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per inference run")
    p.add_argument("--parallel", type=int, default=2, help="inference runs in flight at once")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    if a.channels is not None:
        from mlp_model import write_mlp

        a.model_dir = Path(tempfile.mkdtemp(prefix="scanlens-bench-"))
        write_mlp(a.model_dir / "mlp.onnx", a.channels)
        a.model = f"mlp-{a.channels}"  # the name in its card
    rec = load_recognizers(a.model_dir, [a.model], threads=a.threads)[a.model]
    axis = rec.card.input.axis
    rows = max(1, a.spectra // a.line)
    base = dict(ingest="tcp://127.0.0.1:0", publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0",
                model_dir=a.model_dir, models=[a.model], inference_threads=a.threads, inference_parallel=a.parallel)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="scanlens-curve-") as tmp:
        keys = make_keys(Path(tmp))
        settings = {"off": Settings(**base),
                    "on": Settings(**base, curve_secret_key=keys["server_secret"], curve_allowed_keys=keys["allowed"])}
        for i in range(a.repeats):
            for mode in ("off", "on"):
                print(f"repeat {i + 1}/{a.repeats}, CURVE {mode} ...", file=sys.stderr)
                runs[mode].append(asyncio.run(one_scan(settings[mode], axis, rows, a.line, f"curve-{mode}-{i}",
                                                       keys if mode == "on" else None)))
    best = {mode: max(r["spectra_per_s"] for r in rs) for mode, rs in runs.items()}
    report = {"model": a.model, "channels": rec.channels, "line_spectra": a.line, "line_bytes": a.line * rec.channels * 4,
              "spectra": rows * a.line, "repeats": a.repeats, "threads": a.threads, "parallel": a.parallel,
              "off_spectra_per_s": best["off"], "on_spectra_per_s": best["on"],
              "off_lines_per_s": best["off"] / a.line, "on_lines_per_s": best["on"] / a.line,
              "ratio": best["on"] / best["off"], "runs": runs}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model {a.model} ({rec.channels} channels), lines of {a.line} spectra ({report['line_bytes'] / 1024:.0f} KiB), "
          f"{rows * a.line} spectra per scan, best of {a.repeats}")
    for mode in ("off", "on"):
        rates = ", ".join(f"{r['spectra_per_s']:,.0f}" for r in runs[mode])
        print(f"CURVE {mode:>3}  {best[mode]:12,.0f} spectra/s  {best[mode] / a.line:8,.1f} lines/s   (runs: {rates})")
    print(f"ratio on/off {report['ratio']:.3f}")


if __name__ == "__main__":
    main()
