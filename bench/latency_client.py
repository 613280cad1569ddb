"""Latency as a client sees it, with plain blocking pyzmq (no event loop between the wire and the clock).

* ``Link.round_trips``: one message in flight at a time, PUSH out, wait on a SUB for the message that
  answers it; send -> arrival per message. The same code times the echo relay (bench/limits.py relay:
  the floor) and a lone line through the service (its maps), so the two figures differ only by what
  sits between the sockets.
* ``ScanWatch``: a SUB on one scan's summary and events, optionally its maps; records the arrival time
  of each maps message by seq (``time.perf_counter_ns``, CLOCK_MONOTONIC on Linux: comparable with a
  sender's send times taken in another process, bench/sender.py ``--send-times``).

Used by bench/throughput.py in its own process, never in the service's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import msgpack
import numpy as np
import zmq

from scanlens.pipeline.stats import latency_percentiles
from scanlens.protocol import topics
from scanlens.protocol.codec import encode, validate_tolerant
from scanlens.protocol.messages import Axis, Data, ScanEnd, ScanStart, ScanSummary
from scanlens.transport.shm import RingClient
from scanlens.transport.sockets import connect

#: the longest single blocking receive; between them the caller's ``check`` runs (a child that died)
SLICE_MS = 200

Check = Callable[[], None]


def _nothing() -> None:
    pass


def header_of(frame: zmq.Frame) -> dict:
    return msgpack.unpackb(frame.buffer, raw=False)


def percentiles_ms(latencies_ns: Sequence[int]) -> dict[str, float | None]:
    """``latency_ms_p50`` / ``latency_ms_p99`` the way the service computes its own (numpy percentiles)."""
    return latency_percentiles([ns / 1e6 for ns in latencies_ns])


class Link:
    """A PUSH connected to ``push_endpoint`` (optional) and a SUB on ``sub_endpoint`` subscribed to ``subscribe``."""

    def __init__(self, push_endpoint: str | None, sub_endpoint: str, subscribe: Sequence[str]):
        self.ctx = zmq.Context()
        self.push = connect(self.ctx, zmq.PUSH, push_endpoint, hwm=1000) if push_endpoint else None  # type: ignore[arg-type]
        self.sub = connect(self.ctx, zmq.SUB, sub_endpoint, hwm=100_000)  # type: ignore[arg-type]
        self.sub.setsockopt(zmq.RCVTIMEO, SLICE_MS)
        for t in subscribe:
            self.sub.setsockopt(zmq.SUBSCRIBE, t.encode())

    def close(self) -> None:
        for sock in (self.push, self.sub):
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, frames: Sequence) -> None:
        assert self.push is not None
        self.push.send_multipart(frames, copy=False)

    def recv(self) -> tuple[int, list[zmq.Frame]] | None:
        """(arrival ns, frames), or None after ``SLICE_MS`` without a message."""
        try:
            frames = self.sub.recv_multipart(copy=False)
        except zmq.Again:
            return None
        return time.perf_counter_ns(), frames

    def wait_for(self, wanted: Callable[[list[zmq.Frame]], bool], timeout: float, what: str,
                 check: Check = _nothing) -> tuple[int, list[zmq.Frame]]:
        """The next message that is ``wanted`` (others are dropped); TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            check()
            got = self.recv()
            if got is not None and wanted(got[1]):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:g} s")

    def round_trips(self, messages: Sequence[Sequence] | Callable[[int], Sequence],
                    answers: Callable[[list[zmq.Frame], int], bool], *, n: int | None = None, timeout: float = 2.0,
                    check: Check = _nothing, max_lost: int = 10, gap_s: float = 0.0) -> dict:
        """Send message ``i`` once the answer to ``i - 1`` arrived (or ``timeout`` s passed: then ``i - 1``
        is lost) and, with ``gap_s``, that long after it (outside the clock: every thread on the way has
        been idle that long); ``answers(frames, i)`` tells the answer to ``i`` from anything else. The clock
        runs from just before the send to just after the receive; the messages are encoded before, or, when
        ``messages`` is a function of ``i`` (``n`` of them), made inside the clock (a ring slot filled)."""
        latencies, lost = [], 0
        make = messages if callable(messages) else messages.__getitem__
        count = n if callable(messages) else len(messages)
        for i in range(count):
            if gap_s > 0:
                time.sleep(gap_s)
            t0 = time.perf_counter_ns()
            frames = make(i)
            self.send(frames)
            deadline = time.monotonic() + timeout
            while True:
                got = self.recv()
                if got is not None and answers(got[1], i):
                    latencies.append(got[0] - t0)
                    break
                if got is None:
                    check()
                if time.monotonic() > deadline:
                    lost += 1
                    if lost > max_lost:
                        raise TimeoutError(f"more than {max_lost} of {i + 1} round trips got no answer within "
                                           f"{timeout:g} s")
                    break
        return {"round_trips": count, "lost": lost, **percentiles_ms(latencies)}


def data_messages(scan_id: str, spectra: np.ndarray, n: int) -> list[list]:
    """``n`` data lines of ``spectra`` ([pixels, channels]), rows 0..n-1, framed by the codec as Instrument sends them."""
    return [encode(Data(scan_id=scan_id, seq=i, row=i, col0=0, shape=spectra.shape, dtype="float32"), [spectra])
            for i in range(n)]


def echo_round_trips(pull_endpoint: str, pub_endpoint: str, channels: int, n: int, *,
                     check: Check = _nothing, gap_s: float = 0.0) -> dict:
    """The floor: ``n`` one-spectrum messages, one at a time, through the echo relay (PUSH -> PULL -> PUB -> SUB);
    with ``gap_s``, each sent that long after the answer to the one before (the floor of a paced scan)."""
    spectrum = np.random.default_rng(1).poisson(200.0, size=(1, channels)).astype(np.float32)
    messages = data_messages("echo", spectrum, n)
    probe = encode(Data(scan_id="probe", seq=0, row=0, shape=spectrum.shape, dtype="float32"), [spectrum])
    with Link(pull_endpoint, pub_endpoint, [""]) as link:
        # ZeroMQ subscriptions take effect asynchronously: probe until one comes back
        deadline = time.monotonic() + 10
        while True:
            link.send(probe)
            got = link.recv()
            if got is not None:
                break
            check()
            if time.monotonic() > deadline:
                raise TimeoutError("the echo relay sent nothing back within 10 s")

        def answers(frames: list[zmq.Frame], i: int) -> bool:
            h = header_of(frames[0])
            return h.get("scan_id") == "echo" and h.get("seq") == i

        out = link.round_trips(messages, answers, check=check, gap_s=gap_s)
    return {**out, "message_bytes": spectrum.nbytes, "gap_s": gap_s}


def _wait_live(link: Link, check: Check, timeout: float = 10.0) -> None:
    """Until a status heartbeat arrives: the subscription is live (ZeroMQ's slow joiner); then unsubscribe it."""
    link.sub.setsockopt(zmq.SUBSCRIBE, topics.STATUS.encode())
    link.wait_for(lambda f: f[0].bytes == topics.STATUS.encode(), timeout, "status heartbeat from the service", check)
    link.sub.setsockopt(zmq.UNSUBSCRIBE, topics.STATUS.encode())


def _summary_or_rejection(scan_id: str) -> Callable[[list[zmq.Frame]], bool]:
    summary_topic = topics.scan_topic(scan_id, topics.SUMMARY).encode()
    event_topic = topics.scan_topic(scan_id, topics.EVENT).encode()

    def wanted(frames: list[zmq.Frame]) -> bool:
        topic = frames[0].bytes
        if topic == event_topic:
            h = header_of(frames[1])
            if h.get("code") == "scan_rejected":
                raise RuntimeError(f"the service rejected scan {scan_id}: {h.get('reason')}")
        return topic == summary_topic

    return wanted


def lone_line_round_trips(ingest: str, publish: str, scan_id: str, recognizer: str, axis: Axis, n: int, *,
                          check: Check = _nothing, shm: bool = False) -> dict:
    """A scan of ``n`` lines of one spectrum each through the service, each sent once the maps of the one
    before arrived: send -> maps at this subscriber, and the service's summary. With ``shm`` each line is
    copied into a slot of a shared-memory ring (inside the clock) and the message names the slot."""
    spectrum = np.random.default_rng(2).poisson(200.0, size=(1, axis.size)).astype(np.float32)
    maps_topic = topics.scan_topic(scan_id, topics.MAPS).encode()
    ring = RingClient.open_blocking(ingest, 4, spectrum.nbytes) if shm else None
    if ring is None:
        messages = data_messages(scan_id, spectrum, n)
    else:
        def messages(i: int) -> list:
            slot = ring.acquire_blocking(5.0)
            np.copyto(ring.array(slot, spectrum.shape, spectrum.dtype), spectrum)
            return encode(Data(scan_id=scan_id, seq=i, row=i, col0=0, shape=spectrum.shape, dtype="float32", slot=slot))
    with Link(ingest, publish, [topics.scan_prefix(scan_id)]) as link:
        _wait_live(link, check)
        link.send(encode(ScanStart(scan_id=scan_id, modality="eels", shape=(n, 1), axis=axis,
                                   recognizers=[recognizer], meta={"simulator": "bench", "lone_lines": True},
                                   ring=ring.token if ring is not None else None)))
        started = topics.scan_topic(scan_id, topics.SCAN_STARTED).encode()
        rejected = _summary_or_rejection(scan_id)
        link.wait_for(lambda f: rejected(f) or f[0].bytes == started, 30, f"scan_started of {scan_id}", check)

        def answers(frames: list[zmq.Frame], i: int) -> bool:
            if frames[0].bytes != maps_topic:
                return False
            h = header_of(frames[1])
            return h.get("seq") == i and h.get("recognizer") == recognizer

        out = link.round_trips(messages, answers, n=n, check=check)
        link.send(encode(ScanEnd(scan_id=scan_id, n_messages=n)))
        _, frames = link.wait_for(rejected, 60, f"summary of {scan_id}", check)
    if ring is not None:
        ring.close()
    s = validate_tolerant(ScanSummary, header_of(frames[1]))
    return {**out, "transport": "shm" if shm else "in the message", "no_maps": out.pop("lost"), "lost": s.n_lost, "rejected": len(s.rejected), "state": s.state,
            "service_latency_ms_p50": s.latency_ms_p50, "service_latency_ms_p99": s.latency_ms_p99}


class ScanWatch:
    """One scan's summary (and scan_rejected events), and with ``maps`` the arrival of each maps message of
    ``recognizer``, by seq. Construct before the scan starts: the subscription is live on return."""

    def __init__(self, publish: str, scan_id: str, recognizer: str, *, maps: bool, check: Check = _nothing):
        self.scan_id, self.recognizer = scan_id, recognizer
        subscribe = [topics.scan_topic(scan_id, topics.SUMMARY), topics.scan_topic(scan_id, topics.EVENT)]
        if maps:
            subscribe.append(topics.scan_topic(scan_id, topics.MAPS))
        self.link = Link(None, publish, subscribe)
        try:
            _wait_live(self.link, check)
        except BaseException:
            self.link.close()
            raise
        #: seq -> perf_counter_ns at which its maps arrived here (the first, should one come twice)
        self.arrivals: dict[int, int] = {}

    def summary(self, timeout: float, check: Check = _nothing) -> ScanSummary:
        maps_topic = topics.scan_topic(self.scan_id, topics.MAPS).encode()
        done = _summary_or_rejection(self.scan_id)

        def wanted(frames: list[zmq.Frame]) -> bool:
            if frames[0].bytes == maps_topic:
                h = header_of(frames[1])
                if h.get("recognizer") == self.recognizer:
                    self.arrivals.setdefault(h["seq"], t_now[0])
                return False
            return done(frames)

        t_now = [0]
        deadline = time.monotonic() + timeout
        try:
            while True:
                check()
                got = self.link.recv()
                if got is not None:
                    t_now[0] = got[0]
                    if wanted(got[1]):
                        return validate_tolerant(ScanSummary, header_of(got[1][1]))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no summary of scan {self.scan_id} within {timeout:g} s")
        finally:
            self.link.close()

    def latencies(self, send_ns: Sequence[int]) -> dict:
        """send -> maps at this subscriber per line (``send_ns[seq]`` from the sender): p50/p99 in ms, and
        ``no_maps``: lines sent whose maps never arrived here."""
        lat = [self.arrivals[seq] - t for seq, t in enumerate(send_ns) if seq in self.arrivals]
        return {**percentiles_ms(lat), "lines": len(send_ns), "no_maps": len(send_ns) - len(lat)}
