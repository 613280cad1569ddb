"""Service throughput and latency against bare ONNX Runtime and against the limits of its parts, in the same run.

    python bench/throughput.py [--channels 2048 | --model-dir service/model_files --model eels-mlp] [--line 256]
    python bench/throughput.py [--transport tcp|ipc|shm] [--record DIR [--record-pairs 3]] [--json]
    python bench/throughput.py --spectra 65536 --paced-spectra 16384 --json      # small run, ~15 s

Throughput, each scan ``--spectra`` spectra in lines of ``--line`` spectra on the model axis, sent by
bench/sender.py in its own process as fast as the receiver takes them:

1. bare ORT: the recognizer's session alone, batches of ``--batch`` float32 spectra, same thread settings
   as the service (and 1 run x 2 threads; the better is the baseline) -> spectra/s.
2. bare pyzmq transport: the sender to a bare PULL loop in its own process (bench/limits.py pull) that
   receives with copy=False and discards -> spectra/s, lost lines.
3. limit: the sender to a bare PULL loop in its own process that wraps each line with numpy.frombuffer and
   runs the same session as the service does (same intra-op threads, runs in parallel, batches up to
   ``--batch``; bench/limits.py infer) -> spectra/s, lost lines.
4. service, flat out: the service in its own process (bench/serve_process.py) -> spectra/s, ``ratio`` to
   bare ORT and ``ratio_to_limit`` to 3, lost lines; then its peak RSS (VmHWM) as ``service_peak_rss_mb``.

Latency, in ms, p50 / p99:

5. echo floor: ``--round-trips`` messages of one spectrum (8 KiB at 2048 channels), one in flight at a
   time, PUSH -> PULL -> PUB -> SUB through a bare relay process (bench/limits.py relay); then up to 300
   more, each sent one paced line interval (``--line`` / ``--paced-rate``: 16 ms) after the answer to the
   one before (``echo_paced``): the floor of the paced figures, whose threads all idle between lines.
6. service, paced at ``--paced-rate`` spectra/s (default 16 000, ``--paced-spectra`` spectra): the service's
   own figures (receipt of a line to publication of its maps, from the summary) and, beside them, send ->
   maps at a subscriber in this process (the sender's send time of every line, by seq).
7. lone line: ``--round-trips`` lines of one spectrum through the service, each sent once the previous
   line's maps arrived at the subscriber: send -> maps (bench/latency_client.py, the same code as 5). With
   shm, the way the Python client sends them: a line of one spectrum needs a slot under 64 KiB, so it goes
   in its message (``RING_MIN_SLOT_BYTES``); then the same lines once more through a ring
   (``lone_line_ring``), to show what the ring would cost them.

The same service process serves 4, 6 and 7. ``--transport`` says where the service and every loop bind:
tcp (loopback, port 0) or ipc (a temporary directory, removed after), every payload in its message;
or shm: loopback tcp for the headers, the service's payloads through a shared-memory ring (the sender
writes each line into a slot while it is acquired, then sends its header; the bare loops, which have no
ring, get tcp). With ``--record DIR`` the flat-out
scan runs ``--record-pairs`` times more without and with recording (``serve --record``) in turn, each in
a fresh service process; each pair's ratio and their median are reported. Each recording is deleted after
its pair, so every pair meets the same disk. Progress goes to stderr; prints a table, or one JSON object
with --json. A failing child process ends the run with one line on stderr and exit status 1. Numbers
depend on the machine; compare ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cli_types import count  # noqa: E402
from latency_client import ScanWatch, echo_round_trips, lone_line_round_trips  # noqa: E402
from mlp_model import write_mlp  # noqa: E402
from scanlens.app.config import Settings  # noqa: E402
from scanlens.client.instrument import RING_MIN_SLOT_BYTES, slot_bytes_of  # noqa: E402
from scanlens.pipeline import open_recognizer, load_recognizers  # noqa: E402
from scanlens.protocol.messages import ScanStart  # noqa: E402
from serve_process import Child, ChildError, ServiceProcess  # noqa: E402

BENCH = ROOT / "bench"


# --------------------------------------------------------------------------- transports


class Transport:
    """Where the service and the bare loops bind, and what the sender needs to reach them: the one place a
    transport is defined. Adding one (shm: shared-memory ingest) is a subclass here, an entry in
    ``TRANSPORTS`` and, where its ingest is not a ZeroMQ endpoint, its ``sender_args``."""

    name = ""

    def endpoint(self, role: str) -> str:
        """A fresh address for a socket to bind (the binder reports where it really listens)."""
        raise NotImplementedError

    def service_endpoints(self) -> dict[str, str]:
        """The Settings fields of the service's sockets."""
        return {name: self.endpoint(name) for name in ("ingest", "publish", "control")}

    #: whether the service gets the payloads through a shared-memory ring
    ring = False
    #: when the sender writes a line's payload: as it sends the line, or "in place" while it is acquired
    sender_writes = "at send"

    def sender_args(self) -> list[str]:
        """Extra arguments for bench/sender.py when it sends to the service (tcp and ipc: every payload in
        its message, even on the service's host)."""
        return ["--no-shm"]

    def close(self) -> None:
        pass


class TcpTransport(Transport):
    name = "tcp"

    def endpoint(self, role: str) -> str:
        return "tcp://127.0.0.1:0"


class ShmTransport(TcpTransport):
    """Loopback tcp for the headers, the payloads through the service's shared-memory ring (docs/protocol.md
    §3.6). The sender writes each line into a slot while it is acquired, as a detector writing into shared
    memory would (``--in-place``), and sends its header when the line is complete; the clock of the latency
    at a subscriber starts then. The bare loops have no ring: they get tcp."""

    name = "shm"
    ring = True

    def __init__(self, copies: bool = False) -> None:
        self.copies = copies  # --sender-copies: each finished line is copied into a slot as it is sent
        self.sender_writes = "at send" if copies else "in place"

    def sender_args(self) -> list[str]:
        return ["--shm"] if self.copies else ["--shm", "--in-place"]


class IpcTransport(Transport):
    """``ipc://`` sockets in a temporary directory, one fresh path per bind; the directory is removed by ``close``."""

    name = "ipc"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="scanlens-ipc-"))
        self._n = itertools.count(1)

    def endpoint(self, role: str) -> str:
        return f"ipc://{self.dir}/{role}-{next(self._n)}"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


TRANSPORTS: dict[str, type[Transport]] = {"tcp": TcpTransport, "ipc": IpcTransport, "shm": ShmTransport}


def bare_ort(path: Path, threads: int, parallel: int, batch: int, spectra: int, repeats: int = 3) -> float:
    """Spectra/s of the session alone: ``parallel`` threads each calling ``run`` on its own batches."""
    rec = open_recognizer(path, threads=threads)
    x = np.random.default_rng(0).poisson(200.0, size=(batch, rec.channels)).astype(np.float32)

    def work(n: int) -> None:
        for _ in range(n):
            rec.run(x)

    runs = max(1, spectra // batch // parallel)
    best = 0.0
    with ThreadPoolExecutor(parallel) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(work, [runs] * parallel))
            best = max(best, runs * parallel * batch / (time.perf_counter() - t0))
    return best


def sender_argv(endpoint: str, scan_id: str, axis, rows: int, cols: int, dwell_us: float, transport: Transport,
                *, send_times: bool = False, bare: bool = False) -> list:
    """bench/sender.py's command line; ``bare``: to a bare loop (payloads in the messages: it has no ring)."""
    extra = ["--no-shm"] if bare else transport.sender_args()
    return [BENCH / "sender.py", *(["--send-times"] if send_times else []), *extra, endpoint,
            scan_id, rows, cols, axis.size, axis.offset, axis.scale, axis.units, dwell_us]


def bare_loop(name: str, role: list, axis, rows: int, cols: int, transport: Transport) -> dict:
    """One flat-out scan from the sender into a bare loop of bench/limits.py (``role``) in its own process."""
    with Child(name, [BENCH / "limits.py", *role]) as loop:
        endpoint = loop.line(60)["endpoints"]["pull"]
        with Child("sender", sender_argv(endpoint, "bench-bare", axis, rows, cols, 0.0, transport, bare=True)) as sender:
            result = loop.line(300, watch=[sender])
            result["sender"] = sender.line(60)
            sender.wait(60)
        loop.wait(30)
    return result


def echo_floor(transport: Transport, channels: int, n: int, gap_s: float, n_paced: int) -> tuple[dict, dict]:
    """The echo floor back to back, then with ``gap_s`` of idle before each of ``n_paced`` messages."""
    with Child("echo relay", [BENCH / "limits.py", "relay", transport.endpoint("relay-in"),
                              transport.endpoint("relay-out")]) as relay:
        eps = relay.line(60)["endpoints"]
        out = echo_round_trips(eps["pull"], eps["pub"], channels, n, check=relay.check)
        paced = echo_round_trips(eps["pull"], eps["pub"], channels, n_paced, check=relay.check, gap_s=gap_s)
        relay.stop(30)
    return out, paced


def through_service(service: ServiceProcess, rec_name: str, axis, rows: int, cols: int, dwell_us: float,
                    scan_id: str, transport: Transport, *, maps: bool = False) -> dict:
    """One scan from the sender through the service process; with ``maps`` also send -> maps at a
    subscriber here (``at_subscriber``). Without, only the summary is subscribed (maps are not even sent)."""
    watch = ScanWatch(service.endpoints["publish"], scan_id, rec_name, maps=maps, check=service.check)
    try:
        sender = Child("sender", sender_argv(service.endpoints["ingest"], scan_id, axis, rows, cols, dwell_us,
                                             transport, send_times=maps))
    except BaseException:
        watch.link.close()
        raise
    with sender:
        s = watch.summary(300, check=lambda: (service.check(), sender.check()))
        sent = sender.line(60)
        sender.wait(60)
    out = {"pixels": s.pixels_recognized, "lost": s.n_lost, "rejected": len(s.rejected), "state": s.state,
           "duration_s": s.duration_s, "rate": s.pixels_recognized / s.duration_s,
           "latency_ms_p50": s.latency_ms_p50, "latency_ms_p99": s.latency_ms_p99,
           "sender": {k: v for k, v in sent.items() if k != "send_ns"}}
    if maps:
        out["at_subscriber"] = watch.latencies(sent["send_ns"])
    return out


def service_settings(a: argparse.Namespace, rec_name: str, transport: Transport, **extra) -> Settings:
    return Settings(**transport.service_endpoints(), model_dir=a.model_dir, models=[rec_name],
                    inference_threads=a.threads, inference_parallel=a.parallel, max_batch_pixels=a.batch, **extra)


def flat_in_fresh_service(settings: Settings, a: argparse.Namespace, rec_name: str, axis, scan_id: str,
                          transport: Transport) -> dict:
    with ServiceProcess(settings) as service:
        out = through_service(service, rec_name, axis, a.spectra // a.line, a.line, 0.0, scan_id, transport)
        service.stop(300)  # a recording is complete once the service has stopped
    return out


def recording_pairs(a: argparse.Namespace, rec_name: str, axis, transport: Transport) -> dict:
    """The flat-out scan without and with recording, ``a.record_pairs`` times in turn (this machine's
    run-to-run scatter is larger than the effect), each in a fresh service process: each pair's ratio
    and their median."""
    off, on = [], []
    for i in range(a.record_pairs):
        print(f"pair {i + 1}/{a.record_pairs}: flat out, not recording ...", file=sys.stderr)
        off.append(flat_in_fresh_service(service_settings(a, rec_name, transport), a, rec_name, axis,
                                         "bench-flat", transport))
        print(f"pair {i + 1}/{a.record_pairs}: flat out, recording into {a.record} ...", file=sys.stderr)
        scan_id = f"bench-record-{i + 1}"
        on.append(flat_in_fresh_service(service_settings(a, rec_name, transport, record_dir=a.record), a, rec_name,
                                        axis, scan_id, transport))
        on[-1]["bytes_on_disk"] = sum(f.stat().st_size for f in a.record.glob(f"{scan_id}*.h5"))
        for f in a.record.glob(f"{scan_id}*.h5"):  # the next pair starts with the disk as this one did
            f.unlink()
    ratios = [b["rate"] / o["rate"] for o, b in zip(off, on)]
    return {"off": off, "on": on, "ratios": ratios, "ratio_to_not_recording": float(np.median(ratios))}


def measure(a: argparse.Namespace, transport: Transport) -> dict:
    recs = load_recognizers(a.model_dir, [a.model] if a.model else None, threads=a.threads)
    rec = recs[a.model] if a.model else next(iter(recs.values()))
    axis = rec.card.input.axis
    rows = a.spectra // a.line
    print(f"model {rec.name}: {rec.channels} channels; measuring bare ONNX Runtime ...", file=sys.stderr)
    # the baseline is the best bare ORT can do here: one run on 2 threads, or the service's configuration
    bare_configs = {(2, 1), (a.threads, a.parallel)}
    bare_by_config = {f"{t}x{p}": bare_ort(rec.path, t, p, a.batch, a.spectra) for t, p in sorted(bare_configs)}
    bare = max(bare_by_config.values())
    settings = service_settings(a, rec.name, transport)
    print(f"bare pyzmq transport ({transport.name}) ...", file=sys.stderr)
    wire = bare_loop("bare PULL loop", ["pull", transport.endpoint("bare"), rec.channels], axis, rows, a.line,
                     transport)
    print("limit: bare PULL loop + ONNX Runtime ...", file=sys.stderr)
    queue_pixels = settings.queue_pixels
    queue_bytes = settings.ingest_queue  # the service's bound on the bytes its ingest queues hold
    limit = bare_loop("bare PULL + ONNX Runtime loop",
                      ["infer", transport.endpoint("limit"), rec.path, a.threads, a.parallel, a.batch, queue_pixels,
                       queue_bytes], axis, rows, a.line, transport)
    gap_s = a.line / a.paced_rate  # a paced scan's time from one line to the next
    n_paced = max(1, min(a.round_trips, 300))
    print(f"echo floor: {a.round_trips} round trips through a bare relay, then {n_paced} {gap_s * 1e3:.1f} ms "
          "apart ...", file=sys.stderr)
    echo, echo_paced = echo_floor(transport, rec.channels, a.round_trips, gap_s, n_paced)
    print("service in its own process ...", file=sys.stderr)
    with ServiceProcess(settings) as service:
        print("service, flat out ...", file=sys.stderr)
        flat = through_service(service, rec.name, axis, rows, a.line, 0.0, "bench-flat", transport)
        rss = service.peak_rss_mb()
        print(f"service, paced at {a.paced_rate:g} spectra/s ...", file=sys.stderr)
        paced = through_service(service, rec.name, axis, a.paced_spectra // a.line, a.line, 1e6 / a.paced_rate,
                                "bench-paced", transport, maps=True)
        # the Python client's rule (scanlens.client.Instrument): a ring only for slots of RING_MIN_SLOT_BYTES
        # or more; a line of one 2048-channel spectrum goes in its message
        lone_start = ScanStart(scan_id="bench-lone", modality="eels", shape=(1, 1), axis=axis)
        client_ring = transport.ring and slot_bytes_of(lone_start) >= RING_MIN_SLOT_BYTES
        print(f"service, {a.round_trips} lone lines ({'ring' if client_ring else 'in the message'}) ...",
              file=sys.stderr)
        lone = lone_line_round_trips(service.endpoints["ingest"], service.endpoints["publish"], "bench-lone",
                                     rec.name, axis, a.round_trips, check=service.check, shm=client_ring)
        lone_ring = None
        if transport.ring and not client_ring:
            print(f"service, {a.round_trips} lone lines through a ring all the same ...", file=sys.stderr)
            lone_ring = lone_line_round_trips(service.endpoints["ingest"], service.endpoints["publish"],
                                              "bench-lone-ring", rec.name, axis, a.round_trips, check=service.check,
                                              shm=True)
        service.stop(60)
    recorded = recording_pairs(a, rec.name, axis, transport) if a.record is not None else None
    return {"model": rec.name, "channels": rec.channels, "line_spectra": a.line, "batch": a.batch,
            "threads": a.threads, "parallel": a.parallel, "transport": transport.name,
            "sender_writes": transport.sender_writes,
            "bare_ort_spectra_per_s": bare, "bare_ort_by_threads_x_parallel": bare_by_config,
            "bare_transport_spectra_per_s": wire["spectra_per_s"], "bare_transport": wire,
            "limit_spectra_per_s": limit["spectra_per_s"], "limit": limit,
            "service_spectra_per_s": flat["rate"], "ratio": flat["rate"] / bare,
            "ratio_to_limit": flat["rate"] / limit["spectra_per_s"], "service_peak_rss_mb": rss, "flat": flat,
            "echo": echo, "echo_paced": echo_paced, "paced_rate": a.paced_rate, "paced": paced, "lone_line": lone,
            "lone_line_ring": lone_ring, "recording": recorded}


def _ms(d: dict, prefix: str = "latency_ms_") -> str:
    p50, p99 = d[prefix + "p50"], d[prefix + "p99"]
    return "no latencies" if p50 is None else f"p50 {p50:.3f} ms, p99 {p99:.3f} ms"


def print_table(r: dict) -> None:
    w = 30
    for config, rate in r["bare_ort_by_threads_x_parallel"].items():
        print(f"{'bare ONNX Runtime ' + config:<{w}} {rate:12,.0f} spectra/s   (intra-op threads x runs in parallel)")
    wire, limit, flat = r["bare_transport"], r["limit"], r["flat"]
    print(f"{'bare pyzmq transport, ' + r['transport']:<{w}} {wire['spectra_per_s']:12,.0f} spectra/s   "
          f"lost {wire['lost']}   (PUSH -> PULL copy=False, discarded)")
    print(f"{'limit: PULL + ONNX Runtime':<{w}} {limit['spectra_per_s']:12,.0f} spectra/s   lost {limit['lost']}   "
          f"(np.frombuffer, {r['threads']}x{r['parallel']} as the service, batches <= {r['batch']})")
    print(f"{'service, flat out':<{w}} {flat['rate']:12,.0f} spectra/s   ratio {r['ratio']:.2f} to bare ORT, "
          f"{r['ratio_to_limit']:.2f} to the limit   lost {flat['lost']}, rejected {flat['rejected']}   (sender writes "
          f"{r['sender_writes']})")
    print(f"{'service peak RSS':<{w}} {r['service_peak_rss_mb']:12,.1f} MB          (VmHWM of its process after the "
          "flat-out run)")
    echo, paced, lone = r["echo"], r["paced"], r["lone_line"]
    print(f"{'echo floor':<{w}} {_ms(echo)}   lost {echo['lost']}   ({echo['round_trips']} round trips of "
          f"{echo['message_bytes']:,} B, PUSH -> PULL -> PUB -> SUB)")
    ep = r["echo_paced"]
    print(f"{'echo floor, paced':<{w}} {_ms(ep)}   lost {ep['lost']}   ({ep['round_trips']} round trips, each "
          f"{ep['gap_s'] * 1e3:.1f} ms after the one before: the threads on the way were idle)")
    rate = f"service, paced {r['paced_rate']:,.0f}/s"
    print(f"{rate:<{w}} {_ms(paced)}   lost {paced['lost']}   (service: receipt -> publication)")
    at = paced["at_subscriber"]
    print(f"{rate:<{w}} {_ms(at)}   no maps {at['no_maps']}   (send -> maps at a subscriber)")
    print(f"{'lone line round trip':<{w}} {_ms(lone)}   lost {lone['lost']}, no maps {lone['no_maps']}   "
          f"({lone['round_trips']} lines of 1 spectrum, send -> maps at the subscriber)")
    print(f"{'lone line, in the service':<{w}} {_ms(lone, 'service_latency_ms_')}   (the same lines: receipt -> "
          "publication, from its summary)")
    if r["lone_line_ring"] is not None:
        ring = r["lone_line_ring"]
        print(f"{'lone line through a ring':<{w}} {_ms(ring)}   lost {ring['lost']}, no maps {ring['no_maps']}   "
              f"(the client sends these in the message; service: {_ms(ring, 'service_latency_ms_')})")
    recorded = r["recording"]
    if recorded is not None:
        for i, (off, on) in enumerate(zip(recorded["off"], recorded["on"])):
            print(f"pair {i + 1}: not recording {off['rate']:12,.0f}, recording {on['rate']:12,.0f} spectra/s   ratio "
                  f"{on['rate'] / off['rate']:.2f}   lost {on['lost']}, {on['bytes_on_disk']:,} bytes on disk")
        print(f"recording on / off, median of {len(recorded['ratios'])} interleaved pairs: "
              f"{recorded['ratio_to_not_recording']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None,
                   help="directory of the recognizer to measure (default: the reference MLP of docs/performance.md, see --channels)")
    p.add_argument("--model", default=None, help="recognizer name in --model-dir (default: the first)")
    p.add_argument("--channels", type=int, default=2048, help="input size of the default MLP C -> 128 -> 64 -> 4")
    p.add_argument("--spectra", type=int, default=262_144, help="spectra per flat-out measurement")
    p.add_argument("--line", type=int, default=256, help="spectra per data message")
    p.add_argument("--paced-rate", type=float, default=16_000.0, help="spectra/s for the latency run")
    p.add_argument("--paced-spectra", type=int, default=65_536)
    p.add_argument("--round-trips", type=count, default=1000,
                   help="messages of one spectrum, one at a time, for the echo floor and the lone-line round trip")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per inference run")
    p.add_argument("--parallel", type=int, default=2, help="inference runs in flight at once")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--transport", choices=sorted(TRANSPORTS), default="tcp",
                   help="endpoints the service and every measurement bind (ipc: in a temporary directory); shm: "
                        "loopback tcp with the payloads to the service through a shared-memory ring")
    p.add_argument("--sender-copies", action="store_true",
                   help="with --transport shm: the sender copies each finished line into its slot as it sends it "
                        "(inside the latency clock) instead of writing it there while it is acquired")
    p.add_argument("--record", type=Path, default=None,
                   help="also run the flat-out scan with recording into this directory (serve --record) and "
                        "report its rate as a ratio to the same scan without recording, measured in this run")
    p.add_argument("--record-pairs", type=count, default=3,
                   help="with --record: how many (not recording, recording) pairs to run in turn; the ratio "
                        "reported is their median")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    if a.model_dir is None:
        a.model_dir = Path(tempfile.mkdtemp(prefix="scanlens-bench-"))
        write_mlp(a.model_dir / "mlp.onnx", a.channels)
    transport = ShmTransport(copies=a.sender_copies) if a.transport == "shm" else TRANSPORTS[a.transport]()
    try:
        report = measure(a, transport)
    except (ChildError, TimeoutError, RuntimeError) as exc:
        print(f"throughput: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        transport.close()
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
