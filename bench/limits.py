"""What the service is measured against: bare loops, each in a process of its own (bench/throughput.py).

    python bench/limits.py pull ENDPOINT CHANNELS
    python bench/limits.py infer ENDPOINT MODEL THREADS PARALLEL BATCH QUEUE_PIXELS QUEUE_BYTES
    python bench/limits.py relay PULL_ENDPOINT PUB_ENDPOINT

Each binds its sockets (with ``scanlens.transport.sockets.bind``, as the service does: port 0 or an
``ipc://`` path), prints ``{"endpoints": {...}}`` as one JSON line on stdout, then:

* ``pull``: the bare pyzmq transport. Receives one scan as bench/sender.py sends it (``scan_start``,
  data lines, ``scan_end``) with ``copy=False`` and discards every line: no decoding, no validation.
* ``infer``: the combined limit. The same loop, but every line is wrapped with ``numpy.frombuffer``
  (no header decoding) and queued for ``PARALLEL`` inference threads, each running the recognizer's
  ONNX session (``THREADS`` intra-op threads) the way the service's worker does: a thread takes what
  is queued, up to ``BATCH`` spectra; lines of ``DIRECT_MIN_PIXELS`` or more run on their own received
  buffer, smaller ones are copied into the thread's reused batch and run together. The queue is bounded
  like the service's (``QUEUE_PIXELS`` spectra, ``QUEUE_BYTES`` bytes; one item always fits), so a full
  queue stops the receiving loop and ZeroMQ's queues fill, as in the service.
* ``relay``: the echo relay. Forwards every message from its PULL socket to its PUB socket as
  received (the same frames, ``copy=False``), until SIGTERM.

``pull`` and ``infer`` then print ``{"pixels", "lines", "lost", "duration_s", "spectra_per_s"}`` and exit:
duration from the receipt of ``scan_start`` to the receipt of ``scan_end`` (``pull``) or to the end of
the last inference run (``infer``); ``lost``: data messages that ``scan_end`` counts but that did not
arrive. An error is one line on stderr and exit status 1; so is no message for ``--idle-timeout`` s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanlens.transport.sockets import bind  # noqa: E402

#: data messages bigger than this drop the connection (the service's default ``max_message_bytes``)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class Failure(Exception):
    """Ends a role with one line on stderr and exit status 1."""


def _bound(ctx: zmq.Context, kind: int, endpoint: str, **options) -> tuple[zmq.Socket, str]:
    return bind(ctx, kind, endpoint, **options)  # type: ignore[arg-type]


def _control(frames: list[zmq.Frame]) -> dict:
    """The header of a one-frame message (``scan_start``, ``scan_end``)."""
    header = msgpack.unpackb(frames[0].buffer, raw=False)
    if not isinstance(header, dict):
        raise Failure(f"a one-frame message whose header is not a map: {header!r:.80}")
    return header


def receive_scan(sock: zmq.Socket, idle_timeout: float, on_line) -> dict:
    """Receive one scan (``copy=False``); ``on_line(frame)`` for every data line's buffer. -> counts and times."""
    sock.setsockopt(zmq.RCVTIMEO, int(idle_timeout * 1000))
    lines, t_start, expected = 0, None, None
    while expected is None:
        try:
            frames = sock.recv_multipart(copy=False)
        except zmq.Again:
            raise Failure(f"no message for {idle_timeout:g} s (received {lines} data lines"
                          f"{'' if t_start is not None else ', no scan_start'})") from None
        if len(frames) == 1:
            header = _control(frames)
            if header.get("kind") == "scan_start":
                t_start = time.perf_counter()
            elif header.get("kind") == "scan_end":
                expected = int(header["n_messages"])
            continue
        lines += 1
        on_line(frames[1])
    if t_start is None:
        raise Failure("scan_end without scan_start")
    return {"lines": lines, "lost": max(0, expected - lines), "t_start": t_start, "t_end": time.perf_counter()}


def _result(pixels: int, counts: dict, t_end: float) -> dict:
    duration = t_end - counts["t_start"]
    return {"pixels": pixels, "lines": counts["lines"], "lost": counts["lost"], "duration_s": duration,
            "spectra_per_s": pixels / duration if duration > 0 else float("inf")}


def role_pull(a: argparse.Namespace) -> dict:
    ctx = zmq.Context()
    sock, endpoint = _bound(ctx, zmq.PULL, a.endpoint, max_message_bytes=MAX_MESSAGE_BYTES)
    print(json.dumps({"endpoints": {"pull": endpoint}}), flush=True)
    line_bytes = a.channels * 4
    nbytes = 0

    def discard(frame: zmq.Frame) -> None:
        nonlocal nbytes
        nbytes += len(frame)

    try:
        counts = receive_scan(sock, a.idle_timeout, discard)
    finally:
        sock.close(linger=0)
        ctx.term()
    return _result(nbytes // line_bytes, counts, counts["t_end"])


class LineQueue:
    """The service's ingest queue in threads: bounded in spectra and in bytes; one item always fits."""

    def __init__(self, max_pixels: int, max_bytes: int):
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.pixels = self.nbytes = 0
        self.items: collections.deque[np.ndarray] = collections.deque()
        self.closed = False
        self.cond = threading.Condition()

    def put(self, spectra: np.ndarray) -> None:
        n, nb = len(spectra), spectra.nbytes
        with self.cond:
            self.cond.wait_for(lambda: self.closed or not self.items or (self.pixels + n <= self.max_pixels
                                                                          and self.nbytes + nb <= self.max_bytes))
            if self.closed:  # the workers failed: the main thread reports it
                return
            self.items.append(spectra)
            self.pixels += n
            self.nbytes += nb
            self.cond.notify_all()

    def take(self, max_pixels: int) -> list[np.ndarray] | None:
        """At least one item, then as many more as fit in ``max_pixels``; None once closed and empty."""
        with self.cond:
            self.cond.wait_for(lambda: self.items or self.closed)
            if not self.items:
                return None
            batch = [self.items.popleft()]
            total = len(batch[0])
            while self.items and total + len(self.items[0]) <= max_pixels:
                batch.append(self.items.popleft())
                total += len(batch[-1])
            self.pixels -= total
            self.nbytes -= sum(x.nbytes for x in batch)
            self.cond.notify_all()
            return batch

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def role_infer(a: argparse.Namespace) -> dict:
    from threadpoolctl import threadpool_limits

    from scanlens.pipeline import open_recognizer
    from scanlens.pipeline.spectral import DIRECT_MIN_PIXELS

    rec = open_recognizer(a.model, threads=a.threads)  # warmed up, as the service's
    shape = rec.input_shape
    lines = LineQueue(a.queue_pixels, a.queue_bytes)
    done = [0] * a.parallel
    errors: list[BaseException] = []

    def work(k: int) -> None:
        buf = np.empty((0, *shape), np.float32)  # this thread's reused batch, grown to fit
        try:
            while (items := lines.take(a.batch)) is not None:
                small = []
                for x in items:
                    if len(x) >= DIRECT_MIN_PIXELS:
                        rec.run(x)
                    else:
                        small.append(x)
                if small:
                    total = sum(len(x) for x in small)
                    if len(buf) < total:
                        buf = np.empty((total, *shape), np.float32)
                    offset = 0
                    for x in small:
                        buf[offset: offset + len(x)] = x
                        offset += len(x)
                    rec.run(buf[:total])
                done[k] += sum(len(x) for x in items)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            lines.close()

    ctx = zmq.Context()
    sock, endpoint = _bound(ctx, zmq.PULL, a.endpoint, max_message_bytes=MAX_MESSAGE_BYTES)
    workers = [threading.Thread(target=work, args=(k,), name=f"infer-{k}", daemon=True) for k in range(a.parallel)]
    with threadpool_limits(1, "blas"):  # as in the service (server.py)
        for t in workers:
            t.start()
        print(json.dumps({"endpoints": {"pull": endpoint}}), flush=True)

        def queue_line(frame: zmq.Frame) -> None:
            if errors:
                raise errors[0]
            lines.put(np.frombuffer(frame.buffer, dtype=np.float32).reshape(-1, *shape))

        try:
            counts = receive_scan(sock, a.idle_timeout, queue_line)
        finally:
            lines.close()
            for t in workers:
                t.join(timeout=300)
            sock.close(linger=0)
            ctx.term()
        t_end = time.perf_counter()
    if errors:
        raise Failure(f"inference failed: {type(errors[0]).__name__}: {errors[0]}")
    if any(t.is_alive() for t in workers):
        raise Failure("inference threads did not finish within 300 s")
    return _result(sum(done), counts, t_end)


def role_relay(a: argparse.Namespace) -> None:
    ctx = zmq.Context()
    pull, pull_ep = _bound(ctx, zmq.PULL, a.pull_endpoint, max_message_bytes=MAX_MESSAGE_BYTES)
    pub, pub_ep = _bound(ctx, zmq.PUB, a.pub_endpoint)
    print(json.dumps({"endpoints": {"pull": pull_ep, "pub": pub_ep}}), flush=True)
    try:
        while True:  # poll with a timeout: a signal that reached one of libzmq's threads still gets handled
            if pull.poll(100):
                pub.send_multipart(pull.recv_multipart(copy=False), copy=False)
    except KeyboardInterrupt:  # SIGTERM, see main
        pass
    finally:
        pull.close(linger=0)
        pub.close(linger=0)
        ctx.term()


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle-timeout", type=float, default=60.0, help="give up after this long without a message (s)")
    roles = p.add_subparsers(dest="role", required=True)
    pull = roles.add_parser("pull", help="bare PULL, discarding")
    pull.add_argument("endpoint")
    pull.add_argument("channels", type=int)
    infer = roles.add_parser("infer", help="bare PULL + the ONNX session, as the service runs it")
    infer.add_argument("endpoint")
    infer.add_argument("model", type=Path)
    for name in ("threads", "parallel", "batch", "queue_pixels", "queue_bytes"):
        infer.add_argument(name, type=int)
    relay = roles.add_parser("relay", help="PULL in, PUB out the same frames")
    relay.add_argument("pull_endpoint")
    relay.add_argument("pub_endpoint")
    a = p.parse_args(argv)
    # the relay has nothing to report: SIGTERM ends it at once (its loop polls with a timeout, so the
    # handler runs even when the signal went to one of libzmq's threads: the relay used to hang then)
    signal.signal(signal.SIGTERM, (lambda signum, frame: os._exit(0)) if a.role == "relay" else _stop)
    try:
        if a.role == "relay":
            role_relay(a)
            return 0
        result = role_pull(a) if a.role == "pull" else role_infer(a)
    except KeyboardInterrupt:
        print(f"{a.role}: stopped before the scan ended", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"{a.role}: {type(exc).__name__ + ': ' if not isinstance(exc, Failure) else ''}{exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
