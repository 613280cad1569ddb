"""Soak: the service under a long barrage of mixed valid and invalid messages over many concurrent scans.

    python bench/soak.py [--messages 100000] [--scans 16] [--instruments 4] [--budget-mib 256] [--json]
    python bench/soak.py --messages 3000 --json      # small run, ~10 s

The service runs in a process of its own (scanlens.testing's ``band`` model, written to a temporary
directory; memory budget ``--budget-mib``, 3 s scan timeout, 1.5 s for a scan that sends nothing), so that
its resident memory is its own: the senders here keep every planned message and what came back. ``--instruments``
PUSH sockets each keep their share of ``--scans`` scans going at once, one line per message, interleaved;
one more socket sends only junk. Every scan is planned beforehand, with what its summary must say:

* per line: mostly valid; else invalid contents (NaN, wrong channel count, row outside the scan, short
  buffer: rejected), an invalid header whose scan id and seq can still be read (rejected), two buffers
  over ``max_message_bytes`` together (``oversized``, rejected), never sent (lost), or sent by the junk
  socket as one frame over ZeroMQ's size limit (dropped with that connection: lost);
* extra: duplicate seqs, seqs beyond the scan's ``n_messages`` (sent before its scan_end), seqs beyond
  what the scan can have, headers with invalid identifiers, data for scans that were never started;
* per scan: a normal scan_end, one with a huge ``n_messages`` (2**53), one with fewer, or none (the scan
  times out); a second scan_start for an open scan; squatting scan_starts (nothing follows); scans of
  2048 x 2048 pixels (a few fit the budget, more are refused) and of 4096 x 4096 (never fit);
* junk: undecodable bytes, maps that are not headers, kinds the ingest socket does not take.

Checks (exit status 1 and one line on stderr naming those that failed): every scan_start is answered
exactly once; every scan that started has exactly one summary, and it says exactly what the plan says
(rejected seqs, lost runs, messages received, state, pixels), every seq having exactly one fate (zero
unaccounted, zero double-counted); the largest gap between status heartbeats seen by a subscriber is at
most 1 s; no ``internal`` event; the memory ledger's peak is within the budget; the service process's RSS
after the run minus its RSS once it is up is at most the budget + 64 MiB; the service answers ``status`` at
the end.

Progress goes to stderr; prints a table, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import multiprocessing
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scanlens.client import Control, Instrument, Subscriber  # noqa: E402
from scanlens.protocol import topics  # noqa: E402
from scanlens.protocol.codec import validate_tolerant  # noqa: E402
from scanlens.protocol.messages import Event, ScanStarted, ScanSummary  # noqa: E402
from scanlens.app.config import Settings  # noqa: E402
from scanlens.testing import band_axis, band_spectra, loopback_settings, serving, write_band_model  # noqa: E402

HUGE = 2**53
CHANNELS = band_axis().size
AXIS = band_axis().model_dump()
MAX_MESSAGE_BYTES = 2**20  # data payloads over 1 MiB are refused (`oversized`); one frame over it drops the sender
SCAN_TIMEOUT_S, START_TIMEOUT_S = 3.0, 1.5
HEARTBEAT_S, MAX_GAP_S = 0.25, 1.0
MIB = 2**20
WINDOW = 64  # scans whose topics are subscribed ahead of the instruments


def rss_bytes(pid: int | str = "self", key: str = "VmRSS") -> int:
    """A process's resident memory (or with key "VmHWM" its peak), from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def pack(header) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


# --------------------------------------------------------------------------- the service, in a process of its own


def serve_child(settings: Settings, conn) -> None:
    """The service's process: serve ``settings``; on the pipe ``conn``, send its endpoints once it is up, then
    answer "ask" with its open scans and ledger, and "stop" with the same, then stop."""
    logging.getLogger("scanlens").setLevel(logging.CRITICAL)  # every refused message is logged; counted here

    async def run() -> None:
        async with serving(settings) as server:
            def facts() -> dict:
                return {"open": len(server.open_scans), "ledger_used": server.scans.ledger.used,
                        "ledger_peak": server.scans.ledger.peak}
            conn.send({"endpoints": server.endpoints, "publish_hwm": server.wire.publish_hwm})
            loop = asyncio.get_running_loop()
            while await loop.run_in_executor(None, conn.recv) != "stop":
                conn.send(facts())
            conn.send(facts())

    asyncio.run(run())


class ServiceProcess:
    """The service in a child process (multiprocessing, spawn: nothing of this process is inherited)."""

    def __init__(self, settings: Settings):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_child, args=(settings, child), daemon=True)
        self.proc.start()
        self.lock = asyncio.Lock()

    async def _call(self, ask: str | None, timeout: float = 60) -> dict:
        async with self.lock:
            if ask is not None:
                self.conn.send(ask)
            deadline = time.monotonic() + timeout
            while not self.conn.poll():
                if not self.proc.is_alive():
                    raise RuntimeError(f"the service process died (exit code {self.proc.exitcode})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the service process did not answer {ask!r} in {timeout:g} s")
                await asyncio.sleep(0.02)
            return self.conn.recv()

    async def started(self) -> dict:
        return await self._call(None)

    async def facts(self) -> dict:
        return await self._call("ask")

    async def stop(self) -> dict:
        out = await self._call("stop")
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 30)
        return out

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


# --------------------------------------------------------------------------- the plan: messages and what they mean


class Payloads:
    """Line payloads by width, made once: valid spectra and the invalid variants."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._cache: dict[int, dict[str, bytes]] = {}

    def __call__(self, cols: int, what: str = "ok") -> bytes:
        if cols not in self._cache:
            good = band_spectra(np.array([self.rng.randrange(3) for _ in range(cols)]))
            nan = good.copy()
            nan[cols // 2, CHANNELS // 2] = np.nan
            self._cache[cols] = {"ok": good.tobytes(), "nan": nan.tobytes(), "short": good.tobytes()[:-4],
                                 "channels": good[:, :-1].tobytes()}
        return self._cache[cols][what]


@dataclass
class Plan:
    """One scan: the messages its instrument sends, in order, and what the service must make of them."""

    sid: str
    kind: str  # "scan", "squat", "big", "huge"
    rows: int
    cols: int
    messages: list[list[bytes]] = field(default_factory=list)
    junk: list[list[bytes]] = field(default_factory=list)  # frames over ZeroMQ's limit, for the junk socket
    starts: int = 0  # scan_starts sent (each is answered once)
    accepted: set[int] = field(default_factory=set)
    rejected: set[int] = field(default_factory=set)
    rows_done: set[int] = field(default_factory=set)  # rows of accepted lines (pixels in the maps)
    n_messages: int | None = None
    max_messages: int = 0

    def verdict(self, seq: int, ok: bool) -> None:
        """The service's rule for a data message with a valid header (docs/protocol.md §3.2)."""
        if seq in self.accepted or seq in self.rejected:
            return  # a repeat changes nothing
        if (self.n_messages is not None and seq >= self.n_messages) or seq >= self.max_messages or not ok:
            self.rejected.add(seq)
        else:
            self.accepted.add(seq)

    def unreadable(self, seq: int) -> None:
        """A header that fails validation (or a payload over the limit) whose scan id and seq can be read."""
        if seq not in self.accepted:
            self.rejected.add(seq)

    def end(self, n: int) -> None:
        self.n_messages = n
        beyond = {s for s in self.accepted if s >= n}
        self.accepted -= beyond
        self.rejected |= beyond

    @property
    def expected(self) -> int:
        if self.n_messages is not None:
            return self.n_messages
        return max(self.accepted | self.rejected, default=-1) + 1

    def lost_ranges(self) -> list[tuple[int, int]]:
        """The seqs below ``expected`` neither accepted nor rejected, as half-open runs."""
        out, at = [], 0
        for seq in sorted(s for s in self.accepted | self.rejected if s < self.expected):
            if seq > at:
                out.append((at, seq))
            at = seq + 1
        if at < self.expected:
            out.append((at, self.expected))
        return out


def data(sid, seq, row, cols, **override) -> dict:
    return {"v": 1, "kind": "data", "scan_id": sid, "seq": seq, "row": row, "shape": [cols, CHANNELS],
            "dtype": "float32", **override}


def plan_scan(rng: random.Random, sid: str, payload: Payloads) -> Plan:
    u = rng.random()
    if u < 0.03:
        p = Plan(sid, "squat", rng.randint(1, 16), rng.randint(1, 16))
    elif u < 0.05:
        p = Plan(sid, "big", 2048, 2048)  # 75 MiB of maps: a few fit a 256 MiB budget
    elif u < 0.06:
        p = Plan(sid, "huge", 4096, 4096)  # 300 MiB of maps: never fits
    else:
        p = Plan(sid, "scan", rng.randint(8, 48), rng.randint(8, 32))
    p.max_messages = p.rows * p.cols
    start = {"v": 1, "kind": "scan_start", "scan_id": sid, "modality": "eels", "shape": [p.rows, p.cols],
             "axis": AXIS, "meta": {"soak": True}}
    p.messages.append([pack(start)])
    p.starts = 1
    if p.kind == "squat":
        return p
    if rng.random() < 0.03:  # a second scan_start for the open scan: refused, the scan goes on
        p.messages.append([pack(start)])
        p.starts += 1
    lines = rng.randint(4, 12) if p.kind in ("big", "huge") else p.rows
    order = list(range(lines))
    for i in range(len(order) - 1):
        if rng.random() < 0.05:
            order[i], order[i + 1] = order[i + 1], order[i]
    cols, sent = p.cols, []

    def line(seq: int, what: str = "ok") -> None:
        row = seq % p.rows if what != "row" else p.rows
        shape_cols = CHANNELS - 1 if what == "channels" else CHANNELS
        header = data(sid, seq, row, cols, shape=[cols, shape_cols])
        p.messages.append([pack(header), payload(cols, "ok" if what == "row" else what)])
        new = seq not in p.accepted
        p.verdict(seq, what == "ok")
        if new and seq in p.accepted:
            p.rows_done.add(row)  # in the maps for good, even if scan_end then puts the seq beyond n_messages
        sent.append(seq)

    for seq in order:
        u = rng.random()
        if u < 0.05:
            pass  # never sent: lost
        elif u < 0.07:  # one frame over ZeroMQ's limit: the connection drops, the message never arrives
            p.junk.append([pack(data(sid, seq, seq % p.rows, cols)), b"\0" * (MAX_MESSAGE_BYTES + 64)])
        elif u < 0.13:
            line(seq, rng.choice(["nan", "channels", "row", "short"]))
        elif u < 0.17:
            bad = data(sid, seq, seq % p.rows, cols) | rng.choice([{"dtype": "float16"}, {"extra": 1},
                                                                   {"row": -1}, {"shape": [0, CHANNELS]}])
            p.messages.append([pack(bad), payload(cols)])
            p.unreadable(seq)
        elif u < 0.19:  # two buffers, each within the frame limit, over max_message_bytes together
            half = b"\0" * (MAX_MESSAGE_BYTES // 2 + 8)
            p.messages.append([pack(data(sid, seq, seq % p.rows, cols)), half, half])
            p.unreadable(seq)
        else:
            line(seq)
        u = rng.random()
        if u < 0.05 and sent:
            line(rng.choice(sent))  # a duplicate
        elif u < 0.07:
            line(lines + rng.randint(0, 2))  # beyond the scan_end to come
        elif u < 0.08:
            line(rng.choice([2**40, HUGE]))  # beyond what the scan can have
        elif u < 0.10:  # identifiers that cannot be read: reported, never attributed
            bad = rng.choice([{"seq": -1}, {"seq": "3"}, {"seq": 2**60}, {"scan_id": sid + "/x"}, {"scan_id": ""}])
            p.messages.append([pack(data(sid, 0, 0, cols) | bad), payload(cols)])
        elif u < 0.12:
            p.messages.append([pack(data(f"ghost-{sid}", 0, 0, cols)), payload(cols)])  # never started
    u = rng.random()
    if u < 0.83:
        n = lines
    elif u < 0.88:
        n = HUGE
    elif u < 0.90:
        n = max(0, lines - 1)
    else:
        n = None  # no scan_end: the scan times out
    if n is not None:
        p.messages.append([pack({"v": 1, "kind": "scan_end", "scan_id": sid, "n_messages": n})])
        p.end(n)
        if rng.random() < 0.03:  # after the end: a repeat, late, or a duplicate while results are out
            p.messages.append([pack({"v": 1, "kind": "scan_end", "scan_id": sid, "n_messages": n})])
        if sent and rng.random() < 0.05:
            seq = rng.choice(sent)
            p.messages.append([pack(data(sid, seq, seq % p.rows, cols)), payload(cols)])
    return p


def junk(rng: random.Random) -> list[bytes]:
    return rng.choice([
        lambda: [rng.randbytes(rng.randint(1, 40))],
        lambda: [pack([1, 2, 3])],
        lambda: [pack({1: 2})],
        lambda: [pack({"v": 1, "kind": "request", "id": 1, "op": "status"})],
        lambda: [pack({"v": 2, "kind": "data"})],
        lambda: [pack({"v": 1, "kind": "data", "scan_id": "never-started", "seq": 0, "row": 0,
                       "shape": [1, CHANNELS], "dtype": "float32"}), b"\0" * (4 * CHANNELS)],
        lambda: [pack({"v": 1, "kind": "scan_end", "scan_id": "never-started", "n_messages": 3})],
        lambda: [b""],
    ])()


def plan_all(rng: random.Random, n_messages: int) -> tuple[list[Plan], list[list[bytes]]]:
    payload = Payloads(rng)
    plans, total = [], 0
    while total < n_messages * 0.97:
        p = plan_scan(rng, f"soak-{len(plans)}", payload)
        plans.append(p)
        total += len(p.messages) + len(p.junk)
    return plans, [junk(rng) for _ in range(max(1, n_messages - total))]


# --------------------------------------------------------------------------- checks


def fates(p: Plan, s: ScanSummary) -> tuple[int, int]:
    """(unaccounted, double-counted) seqs of [0, expected): recognized (the plan's accepted), rejected and
    lost (the summary's) must cover it exactly once; only rejected seqs may lie beyond it."""
    expected = s.messages_sent if s.messages_sent is not None else p.expected
    runs = sorted([(q, q + 1) for q in p.accepted] + [(r.seq, r.seq + 1) for r in s.rejected]
                  + [tuple(r) for r in s.lost_ranges])
    unaccounted = double = 0
    at = 0
    for a, b in runs:
        if a < at:
            double += min(b, at) - a
        elif a < expected:
            unaccounted += a - at
        at = max(at, b)
    if at < expected:
        unaccounted += expected - at
    return unaccounted, double


def mismatch(p: Plan, s: ScanSummary) -> str | None:
    """What differs between the summary and the plan, or None."""
    want_state = ("timed_out" if p.n_messages is None else
                  "complete" if not p.rejected and not p.lost_ranges() and len(p.rows_done) == p.rows
                  and len(p.accepted) == p.rows else "incomplete")
    got = {"state": s.state, "messages_sent": s.messages_sent, "rejected": sorted(r.seq for r in s.rejected),
           "lost_ranges": [tuple(r) for r in s.lost_ranges], "messages_received": s.messages_received,
           "pixels_recognized": s.pixels_recognized, "pixels_expected": s.pixels_expected}
    want = {"state": want_state, "messages_sent": p.n_messages, "rejected": sorted(p.rejected),
            "lost_ranges": p.lost_ranges(), "messages_received": len(p.accepted) + len(p.rejected),
            "pixels_recognized": len(p.rows_done) * p.cols, "pixels_expected": p.rows * p.cols}
    diff = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    return None if not diff else "; ".join(f"{k} {g!r:.80} (planned {w!r:.80})" for k, (g, w) in diff.items())


# --------------------------------------------------------------------------- the run


async def soak(a: argparse.Namespace, models: Path) -> dict:
    rng = random.Random(a.seed)
    plans, extra_junk = plan_all(rng, a.messages)
    by_id = {p.sid: p for p in plans}
    write_band_model(models / "band.onnx")
    budget = a.budget_mib * MIB
    settings = loopback_settings(models, memory_budget_bytes=budget, max_open_scans=4 * a.scans + 16,
                                 keep_closed_scans=64, scan_timeout_s=SCAN_TIMEOUT_S, start_timeout_s=START_TIMEOUT_S,
                                 status_interval_s=HEARTBEAT_S, max_message_bytes=MAX_MESSAGE_BYTES)
    print(f"{len(plans)} scans planned, {sum(len(p.messages) + len(p.junk) for p in plans) + len(extra_junk)} "
          f"messages; {a.scans} at once over {a.instruments} instruments", file=sys.stderr)
    answers: dict[str, list] = collections.defaultdict(list)
    summaries: dict[str, list[ScanSummary]] = collections.defaultdict(list)
    beats: list[float] = []
    recovered: dict[str, ScanSummary] = {}
    most_open = [0]
    sent, sent_by_instruments = [0], [0]
    service = ServiceProcess(settings)
    try:
        up = await service.started()
        endpoints, publish_hwm = up["endpoints"], up["publish_hwm"]
        rss_before = rss_bytes(service.proc.pid)
        # subscriptions reach the PUB socket at a limited rate (its receive high-water mark is publish_hwm): the
        # scans' topics are subscribed a window ahead of the instruments, each window confirmed live in-band
        # (a probe message for a scan that does not exist: its unknown_scan event comes back on a probe topic)
        sub = Subscriber(endpoints["publish"], topics_=[])
        heart = Subscriber(endpoints["publish"], topics_=[topics.STATUS])
        ctl = Control(endpoints["control"])
        instruments = [Instrument(endpoints["ingest"], linger_s=0) for _ in range(a.instruments)]
        junk_sock = Instrument(endpoints["ingest"], linger_s=0)
        probe_sock = Instrument(endpoints["ingest"], linger_s=0)
        internal: list[Event] = []
        live, next_plan, probe, confirmed = [0], [0], [""], asyncio.Event()
        try:
            await heart.wait_ready()

            async def listen() -> None:
                while True:
                    h = (await sub.recv()).header
                    if isinstance(h, ScanStarted) or (isinstance(h, Event) and h.code == "scan_rejected"):
                        answers[h.scan_id].append(h)
                    elif isinstance(h, ScanSummary):
                        summaries[h.scan_id].append(h)
                    elif isinstance(h, Event) and h.code == "internal":
                        internal.append(h)
                    elif isinstance(h, Event) and h.code == "unknown_scan" and h.scan_id == probe[0]:
                        confirmed.set()

            async def subscribe_ahead() -> None:
                while live[0] < len(plans):
                    if live[0] - next_plan[0] > WINDOW // 2:
                        await asyncio.sleep(0.01)
                        continue
                    batch = plans[live[0]:live[0] + (WINDOW if live[0] else a.scans)]
                    for p in batch:
                        for what in (topics.SCAN_STARTED, topics.SUMMARY, topics.EVENT):
                            sub.sock.setsockopt(zmq.SUBSCRIBE, topics.scan_topic(p.sid, what).encode())
                    probe[0] = f"probe-{live[0]}"
                    marker = topics.scan_topic(probe[0], topics.EVENT).encode()
                    sub.sock.setsockopt(zmq.SUBSCRIBE, marker)
                    confirmed.clear()
                    while not confirmed.is_set():
                        await probe_sock.sock.send_multipart([pack({"v": 1, "kind": "scan_end", "scan_id": probe[0],
                                                                    "n_messages": 0})])
                        sent[0] += 1
                        try:
                            await asyncio.wait_for(confirmed.wait(), 0.05)
                        except TimeoutError:
                            pass
                    sub.sock.setsockopt(zmq.UNSUBSCRIBE, marker)
                    live[0] += len(batch)

            async def heartbeat() -> None:
                while True:
                    h = (await heart.recv()).header
                    beats.append(time.monotonic())
                    most_open[0] = max(most_open[0], len(h.open_scans))

            async def instrument(inst: Instrument) -> None:
                share = max(1, a.scans // a.instruments)
                active: list[tuple[Plan, int]] = []
                while True:
                    while (next_plan[0] < live[0] and
                           sum(p.kind != "squat" for p, _ in active) < share):
                        active.append((plans[next_plan[0]], 0))
                        next_plan[0] += 1
                    if not active:
                        if next_plan[0] >= len(plans):
                            return
                        await asyncio.sleep(0.005)  # the next scans' topics are not live yet
                        continue
                    i = rng.randrange(len(active))
                    p, at = active[i]
                    await inst.sock.send_multipart(p.messages[at])
                    sent[0] += 1
                    sent_by_instruments[0] += 1
                    if at + 1 < len(p.messages):
                        active[i] = (p, at + 1)
                    else:
                        active.pop(i)
                    await asyncio.sleep(0)

            async def junk_sender(messages: list[list[bytes]]) -> None:
                """Junk spread over the run: message i once the instruments have sent their share up to it."""
                per = sum(len(p.messages) for p in plans) / max(1, len(messages))
                for i, m in enumerate(messages):
                    while sent_by_instruments[0] < i * per:
                        await asyncio.sleep(0.002)
                    await junk_sock.sock.send_multipart(m)
                    sent[0] += 1

            async def progress(t0: float) -> None:
                while True:
                    await asyncio.sleep(5)
                    f = await service.facts()
                    print(f"{time.monotonic() - t0:6.1f} s: {sent[0]} messages sent, {len(summaries)} summaries, "
                          f"{f['open']} scans open, ledger {f['ledger_used'] / MIB:.0f} MiB, service RSS "
                          f"{rss_bytes(service.proc.pid) / MIB:.0f} MiB", file=sys.stderr)

            t0 = time.monotonic()
            listeners = [asyncio.create_task(listen()), asyncio.create_task(heartbeat()),
                         asyncio.create_task(progress(t0))]
            hostile = [m for p in plans for m in p.junk] + extra_junk
            rng.shuffle(hostile)
            try:
                await asyncio.gather(*(instrument(inst) for inst in instruments), junk_sender(hostile),
                                     subscribe_ahead())
                t_sent = time.monotonic()

                def done() -> bool:
                    return (all(len(answers.get(p.sid, ())) >= p.starts for p in plans)
                            and all(sid in summaries for sid, got in answers.items()
                                    if any(isinstance(h, ScanStarted) for h in got)))

                deadline = time.monotonic() + SCAN_TIMEOUT_S + 60
                quiet_since = None  # nothing open at the service: what is still missing is not coming
                while not done() and time.monotonic() < deadline:
                    assert not any(t.done() for t in listeners), [t for t in listeners if t.done()]
                    if (await service.facts())["open"]:
                        quiet_since = None
                    elif quiet_since is None:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > 1.0:
                        break
                    await asyncio.sleep(0.1)
                # a summary the subscriber did not get (the PUB socket drops beyond publish_hwm): from the
                # control socket, while the closed scan is still retained (one row of maps, for the summary)
                for p in plans:
                    if p.sid not in summaries and p.kind != "huge":
                        try:
                            reply = await ctl.request("snapshot", p.sid, rows=(0, 1), timeout=5)
                        except Exception:  # noqa: BLE001 - refused, or no longer retained
                            continue
                        if reply.result.get("summary") is not None:
                            recovered[p.sid] = validate_tolerant(ScanSummary, reply.result["summary"])
                await asyncio.sleep(2 * HEARTBEAT_S)
                t_end = time.monotonic()
                try:
                    status = (await ctl.request("status", timeout=5)).result
                except Exception as exc:  # noqa: BLE001 - reported as a failed check
                    print(f"no status reply: {exc!r}", file=sys.stderr)
                    status = None
            finally:
                for t in listeners:
                    t.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)
            rss_after = rss_bytes(service.proc.pid)
            rss_peak = rss_bytes(service.proc.pid, "VmHWM")
        finally:
            for c in (sub, heart, ctl, junk_sock, probe_sock, *instruments):
                c.close()
        ledger = await service.stop()
    finally:
        service.kill()

    # ------------------------------------------------------------------ the verdict
    window = [t for t in beats if t0 <= t <= t_end]
    gaps = np.diff([t0, *window, t_end]) if window else np.array([t_end - t0])
    # what reached the subscriber; a summary the PUB socket dropped may come back from a snapshot
    received = {sid: len(v) for sid, v in summaries.items()}
    for sid, summary in recovered.items():
        summaries[sid].append(summary)
    # a scan started when it was answered scan_started, or when a summary of it exists (its answer was dropped)
    started = [p for p in plans if any(isinstance(h, ScanStarted) for h in answers[p.sid]) or summaries[p.sid]]
    twice = [p.sid for p in plans if sum(isinstance(h, ScanStarted) for h in answers[p.sid]) > 1
             or len(answers[p.sid]) > p.starts]
    answers_dropped = sum(max(0, p.starts - len(answers[p.sid])) for p in plans)
    summaries_dropped = sum(1 for p in started if not received.get(p.sid))
    # scans that must have started (nothing in the plan refuses them), whatever reached the subscriber
    must_start = [p for p in plans if p.kind in ("scan", "squat")]
    no_summary = [p.sid for p in started + must_start if len(summaries[p.sid]) != 1]
    unexpected = [sid for sid in summaries if sid not in by_id]
    wrongly = [p.sid for p in plans if p.kind == "huge" and p in started]
    mismatches, unaccounted, double = {}, 0, 0
    for p in started:
        if len(summaries[p.sid]) == 1:
            s = summaries[p.sid][0]
            if (why := mismatch(p, s)) is not None:
                mismatches[p.sid] = why
            u, d = fates(p, s)
            unaccounted, double = unaccounted + u, double + d
    refused = collections.Counter(by_id[sid].kind for sid, got in answers.items()
                                  if sid in by_id and not any(isinstance(h, ScanStarted) for h in got)
                                  and not summaries[sid])
    checks = {
        "no scan_start answered twice, no impossible scan started": not twice and not wrongly,
        "one summary per started scan": not no_summary and not unexpected,
        "summaries as planned": not mismatches,
        "every seq accounted once": unaccounted == 0 and double == 0,
        f"every answer and summary reached the subscriber (publish_hwm {publish_hwm})":
            answers_dropped == 0 and summaries_dropped == 0,
        f"heartbeat gap <= {MAX_GAP_S:g} s": float(gaps.max()) <= MAX_GAP_S,
        "no internal events": not internal and (status or {}).get("counters", {}).get("event.internal", 0) == 0,
        "ledger within budget": ledger["ledger_peak"] <= budget,
        "service RSS growth <= budget + 64 MiB": rss_after - rss_before <= budget + 64 * MIB,
        f">= {a.scans} scans open at once": most_open[0] >= a.scans,
        "service up at the end": status is not None,
    }
    report = {
        "messages_sent": sent[0], "scans_planned": len(plans), "scans_started": len(started),
        "scans_refused": dict(refused), "summaries": sum(map(len, summaries.values())),
        "states": dict(collections.Counter(s.state for v in summaries.values() for s in v)),
        "seqs_unaccounted": unaccounted, "seqs_double_counted": double, "summaries_not_as_planned": len(mismatches),
        "mismatch_examples": dict(list(mismatches.items())[:5]), "missing_summaries": no_summary[:10],
        "answers_dropped_by_pub": answers_dropped, "summaries_dropped_by_pub": summaries_dropped,
        "summaries_recovered_by_snapshot": len(recovered), "max_open_scans": most_open[0],
        "heartbeats": len(window), "heartbeat_max_gap_s": float(gaps.max()),
        "ledger_peak_bytes": ledger["ledger_peak"], "budget_bytes": budget,
        "ledger_peak_fraction": ledger["ledger_peak"] / budget,
        "rss_before_bytes": rss_before, "rss_after_bytes": rss_after, "rss_growth_bytes": rss_after - rss_before,
        "rss_peak_bytes": rss_peak, "publish_hwm": publish_hwm,
        "send_s": t_sent - t0, "duration_s": t_end - t0, "messages_per_s": sent[0] / (t_sent - t0),
        "events": {k[6:]: v for k, v in sorted((status or {}).get("counters", {}).items()) if k.startswith("event.")},
        "internal_events": [e.reason for e in internal[:5]],
        "checks": checks, "ok": all(checks.values()),
    }
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000, help="messages to send in all (junk included)")
    p.add_argument("--scans", type=int, default=16, help="scans kept going at once")
    p.add_argument("--instruments", type=int, default=4, help="PUSH sockets the scans are spread over")
    p.add_argument("--budget-mib", type=int, default=256, help="the service's memory_budget_bytes, in MiB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.messages < 100 or a.scans < 1 or a.instruments < 1 or a.budget_mib < 1:
        p.error("--messages >= 100, --scans, --instruments and --budget-mib >= 1")
    logging.getLogger("scanlens").setLevel(logging.CRITICAL)  # every refused message is logged; counted here instead
    try:
        with tempfile.TemporaryDirectory(prefix="scanlens-soak-") as models:
            report = asyncio.run(soak(a, Path(models)))
    except Exception as exc:  # the service process died or did not answer, or the run itself failed
        print(f"soak FAILED: the run stopped: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        sys.exit(1)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['messages_sent']} messages in {report['send_s']:.1f} s ({report['messages_per_s']:.0f}/s), "
              f"{report['scans_started']} scans started ({report['max_open_scans']} open at most), "
              f"{report['summaries']} summaries {report['states']}")
        print(f"seqs unaccounted {report['seqs_unaccounted']}, double-counted {report['seqs_double_counted']}, "
              f"summaries not as planned {report['summaries_not_as_planned']}")
        print(f"largest heartbeat gap {report['heartbeat_max_gap_s']:.3f} s; ledger peak "
              f"{report['ledger_peak_bytes'] / MIB:.1f} of {report['budget_bytes'] / MIB:.0f} MiB; RSS "
              f"{report['rss_before_bytes'] / MIB:.0f} -> {report['rss_after_bytes'] / MIB:.0f} MiB "
              f"(peak {report['rss_peak_bytes'] / MIB:.0f})")
        for name, ok in report["checks"].items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        print(f"soak FAILED: {'; '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
