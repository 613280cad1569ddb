"""Fuzzing ingest against the real thing (issue 10, item 5): generated headers and buffers of every kind,
valid and invalid, over several concurrent scans, interleaved with results, clock advances and timeouts.

Two levels, one message generator:

1. ``ScanManager`` through the real codec (``decode``; a ``ProtocolError`` goes to ``unreadable``, as the
   server does), real ONNX models and real workers, many hypothesis examples. A model of what the sender
   did predicts the outcome of every message (accepted, rejected, duplicate, forbidden, late, unknown,
   refused scan_start) and, at the close, every summary exactly. After every step: nothing but a
   ``ProtocolError`` escapes, every publication encodes and decodes strictly, no ``internal`` event, the
   memory ledger is within its budget and equals what the open and retained scans hold.
2. A real server on loopback: a seeded barrage of raw msgpack messages over one PUSH socket; the service
   answers every scan_start once, stays up, and every summary accounts for every seq.

The invariant of every summary (``check_fates``): the seqs recognized (accepted, not skipped), rejected,
skipped and lost (``lost_ranges``, half-open runs) are pairwise disjoint and together cover exactly
``[0, expected)`` — ``expected`` is ``messages_sent``, or for a timed-out scan the highest seq seen + 1 —
with only rejected seqs allowed beyond it (a seq at or beyond ``n_messages`` that arrived is rejected);
``messages_received`` = recognized + skipped + rejected.

Examples per test: hypothesis profile ``ci`` (the default, well under a minute in all), ``soak``
(``HYPOTHESIS_PROFILE=soak pytest tests/test_fuzz.py``: 2000 examples, longer barrages, 20 server
barrages; minutes) or ``dev`` (200 examples, no shrinking: a quick look at what fails).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scanlens.pipeline import WorkerOptions, open_recognizer
from scanlens.protocol import topics
from scanlens.protocol.codec import Limits, ProtocolError, decode, encode
from scanlens.protocol.messages import (INGEST_KINDS, MAX_EDGE, Event, FrameResult, Maps, ScanStarted, ScanSummary)
from scanlens.testing import (FRAME_PIXEL_NM, ManagerHarness, band_axis, connected, loopback_settings, nested_map,
                              render_frame, serving, write_band_model, write_frame_model)

# --------------------------------------------------------------------------- hypothesis profiles

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
# CI does not shrink a failure (minutes for these long examples): the assertion names the message that broke
# the rule, and ``print_blob`` the example to reproduce; shrink it locally with the soak profile
settings.register_profile("ci", max_examples=150, phases=[Phase.explicit, Phase.generate], **_COMMON)
settings.register_profile("soak", max_examples=2000, **_COMMON)
settings.register_profile("dev", max_examples=200, phases=[Phase.explicit, Phase.generate], **_COMMON)  # no shrinking
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
#: steps per example (level 1) and messages per barrage (level 2) grow with the profile
MAX_STEPS = {"ci": 100}.get(PROFILE, 200)
BARRAGE = {"ci": 400}.get(PROFILE, 3000)
#: the suite's 120 s per test is for CI; a longer profile takes what it needs
LONG = pytest.mark.timeout(120 if PROFILE == "ci" else 3600)

# --------------------------------------------------------------------------- the protocol's rules, restated

POOL = ("s0", "s1", "s2", "s3")  # the scan ids of a barrage (reused after a scan closed)
OWNERS = (None, "alice", "bob")
SCAN_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
BAD_IDS = ("", "a/b", "x" * 65, "white space", "ü", "s0\n", 7, 1.5, None, ["s0"], {"id": "s0"})
BAD_INTS = ("17", 1.5, 1.0, True, False, None, [1], {"a": 1}, -1, 2**53 + 1, 2**63, -(2**63))
BAD_VERSIONS = (2, 0, "1", 1.0, True, None, [1])
BAD_DTYPES = ("float16", "f4", "<f4", "FLOAT32", "complex64", 5, None)
HUGE = 2**53
CHANNELS = band_axis().size
BAND_AXIS = band_axis().model_dump()
FRAME_UNITS = {"nm": 1.0, "Å": 10.0, "pm": 1000.0}
#: the codec's limits in the harness: payloads over 8 KiB are ``oversized`` (a 32x32 float64 frame just fits)
LIMITS = Limits(max_payload_bytes=8192)
LIST_LIMIT = 4096
DTYPES = {"float32": "<f4", "float64": "<f8", "uint16": "<u2", "int32": "<i4", "uint8": "u1", "int16": "<i2",
          "uint32": "<u4"}


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and SCAN_ID.match(value) is not None and "\n" not in value


def valid_index(value: Any) -> bool:
    return type(value) is int and 0 <= value <= HUGE


# --------------------------------------------------------------------------- choices: hypothesis or a seeded Random


class Drawn:
    """Choices drawn from hypothesis (they shrink towards the first option, and towards "no")."""

    def __init__(self, data: st.DataObject):
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, options):
        return self.data.draw(st.sampled_from(options))

    def chance(self, percent: int) -> bool:
        return self.data.draw(st.integers(0, 99)) >= 100 - percent

    def bytes(self) -> bytes:
        return self.data.draw(st.binary(max_size=48))


class Seeded:
    """The same choices from a seeded ``random.Random`` (the real-server barrage)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options):
        return options[self.rng.randrange(len(options))]

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent

    def bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, 48))


# --------------------------------------------------------------------------- messages


@dataclass
class Plan:
    """What a scan_start asks for."""

    takes: str  # "spectra" | "frames"
    shape: tuple[int, int]
    channels: int = CHANNELS
    components: int = 0
    frames: int | None = None
    policy: str = "lossless"
    openable: bool = True  # False: refused whatever the state (recognizer, axis, zoom, size, budget, buffers)

    @property
    def max_messages(self) -> int:
        rows, cols = self.shape
        if self.takes == "spectra":
            return rows * cols
        return self.frames if self.frames is not None else HUGE // (rows * cols)


@dataclass
class Msg:
    """One raw ingest message and what the sender knows about it."""

    kind: Any  # the header's kind as sent (after any mutation); "garbage" for what is no header at all
    frames: list
    sid: Any = None  # the scan_id as sent (perhaps invalid, perhaps absent)
    seq: Any = None
    owner: str | None = None
    header_ok: bool = True  # a valid header of its kind, by construction
    readable: bool = True  # a msgpack map within the header limits: its valid identifiers can be read
    oversized: bool = False  # the payload is over LIMITS
    plan: Plan | None = None  # scan_start
    row: int = 0
    col0: int = 0
    n: int = 0
    channels: int = 0
    components: int = 0
    frame: int = 0
    frame_shape: tuple = ()
    payload_ok: bool = True
    n_messages: Any = None  # scan_end
    what: str = ""

    @property
    def pixels(self) -> int:
        return self.n if self.kind == "data" else int(np.prod(self.frame_shape))


def _pack(header: Any) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


@functools.lru_cache(maxsize=None)
def _image(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    atoms = np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6]])
    return render_frame(shape, atoms, np.array([[w * 0.5, h * 0.5]]) if min(shape) >= 8 else np.zeros((0, 2)))


class Sender:
    """Builds the next message of a barrage; ``view(sid)`` is the scan the sender believes open (or None)."""

    def __init__(self, ch, view, *, sids=POOL, owners=OWNERS):
        self.ch = ch
        self.view = view
        self.sids = sids
        self.owners = owners
        self.clean: dict[str, bool] = {}  # scans whose sender is careful (complete scans happen too)
        self._careful = False

    def fault(self, percent: int) -> bool:
        """Whether to get this one thing wrong (never, mostly, for a careful scan)."""
        return not self._careful and self.ch.chance(percent)

    def _be_careful(self, sid: Any, scan) -> None:
        self._careful = scan is not None and self.clean.get(sid, False) and not self.ch.chance(10)

    # ---------------------------------------------------------------- choices shared by every kind

    def _open(self) -> list[str]:
        return [sid for sid in self.sids if self.view(sid) is not None]

    def _sid(self) -> Any:
        ch = self.ch
        live = [sid for sid in self._open() if self.view(sid).n_messages is None]
        if live and not ch.chance(25):
            return ch.pick(live)
        if ch.chance(10):
            return ch.pick(["zz-never", "other:1"])  # never started
        return ch.pick(self.sids)

    def _owner(self, scan) -> str | None:
        ch = self.ch
        owner = scan.owner if scan is not None else ch.pick(self.owners)
        if len(self.owners) > 1 and self.fault(8):
            owner = ch.pick([o for o in self.owners if o != owner])  # a foreign sender
        return owner

    def _seq(self, scan) -> int:
        ch = self.ch
        if scan is None:
            return ch.int(0, 6)
        mode = "next" if self._careful else ch.pick(["next"] * 8 + ["dup", "small", "edge"])
        if mode == "dup" and scan.sent:
            return ch.pick(sorted(scan.sent))
        if mode == "small":
            return ch.int(0, 12)
        if mode == "edge":
            return ch.pick([HUGE, HUGE - 1, 2**31, scan.plan.max_messages, 1000])
        seq = scan.next_seq
        scan.next_seq += 1
        return seq

    def _mutate(self, header: dict, msg: Msg, keys: dict[str, tuple]) -> None:
        """Make the header invalid, one way (``keys``: the kind's own fields and their invalid values)."""
        ch = self.ch
        how = ch.pick(["field", "field", "drop", "extra", "v", "kind", "scan_id"])
        if how == "field":
            key = ch.pick(sorted(keys))
            value = ch.pick(keys[key])
            header[key] = value
            msg.what += f", {key}={value!r:.40}"
            if key == "seq":
                msg.seq = value
        elif how == "drop":
            key = ch.pick([k for k in ("v", "kind", "scan_id", *REQUIRED[header["kind"]]) if k in header])
            del header[key]
            msg.what += f", without {key}"
            if key == "scan_id":
                msg.sid = None
            if key == "seq":
                msg.seq = None
            if key == "kind":
                msg.kind = None
        elif how == "extra":
            header[ch.pick(["bogus", "Seq", "scan-id", "n"])] = 1
            msg.what += ", an unknown key"
        elif how == "v":
            header["v"] = ch.pick(BAD_VERSIONS)
            msg.what += f", v={header['v']!r}"
        elif how == "kind":
            header["kind"] = msg.kind = ch.pick(["datum", "Data", "scan-start", 1, None, "maps", "request"])
            msg.what += f", kind={header['kind']!r}"
        else:
            header["scan_id"] = msg.sid = ch.pick(BAD_IDS)
            msg.what += f", scan_id={header['scan_id']!r:.20}"
        msg.header_ok = False

    # ---------------------------------------------------------------- kinds

    def _exhausted(self) -> list[str]:
        return [sid for sid in self._open() if self.view(sid).n_messages is None
                and self.view(sid).next_seq >= self.view(sid).plan.max_messages]

    def next(self) -> Msg:
        ch = self.ch
        if self._exhausted() and ch.chance(50):
            return self.end(ch.pick(self._exhausted()))
        if self._open():
            kind = ch.pick(["data"] * 8 + ["frame", "start", "end", "junk"])
        else:
            kind = ch.pick(["start"] * 8 + ["data", "frame", "end", "junk"])
        if kind == "junk":
            kind = ch.pick(["garbage", "other_kind"])
        return getattr(self, kind)()

    def start(self, sid: Any = None) -> Msg:
        ch = self.ch
        closed = [s for s in self.sids if s not in self._open()]
        if sid is None:
            sid = ch.pick(closed) if closed and not ch.chance(20) else ch.pick(self.sids)
        variant = ch.pick(["eels"] * 6 + ["movie"] * 6 + ["pca"] * 2 + ["eels-fine", "eels-mev", "no-cover", "units",
                                                                         "stm", "zoom", "unknown-rec", "wrong-rec",
                                                                         "too-big", "budget", "buffers"])
        rows, cols = ch.int(1, 4), ch.int(1, 4)
        header: dict[str, Any] = {"v": 1, "kind": "scan_start", "scan_id": sid, "modality": "eels",
                                  "shape": [rows, cols], "axis": dict(BAND_AXIS)}
        plan = Plan("spectra", (rows, cols))
        zoom = 1.0
        if variant == "movie" or variant in ("stm", "zoom"):
            h, w = ch.pick([(ch.int(1, 32), ch.int(1, 32)), (8, 8), (32, 32)])
            units = ch.pick(sorted(FRAME_UNITS))
            zoom = ch.pick([1.0, 0.5, 2.0])  # frame pixels per model pixel
            size = zoom * FRAME_PIXEL_NM * FRAME_UNITS[units]
            frames = ch.pick([None, ch.int(1, 6)])
            policy = ch.pick(["lossless", "latest"])
            header = {"v": 1, "kind": "scan_start", "scan_id": sid, "modality": "haadf", "shape": [h, w],
                      "pixel_size": {"size": size, "units": units}, "policy": policy}
            if frames is not None:
                header["frames"] = frames
            plan = Plan("frames", (h, w), frames=frames, policy=policy)
            if variant == "stm":
                header["modality"] = "stm"
            if variant == "zoom":
                header["pixel_size"]["size"] = ch.pick([1.0, 0.001]) * FRAME_UNITS[units]
        elif variant == "pca":
            header["modality"] = "bepfm"
            if ch.chance(50):
                header["components"] = ["amplitude", "phase"]
                plan.components = 2
        elif variant == "eels-fine":
            header["axis"] = {"size": 2 * CHANNELS - 1, "offset": 10.0, "scale": 0.5, "units": "eV"}
            plan.channels = 2 * CHANNELS - 1
        elif variant == "eels-mev":
            header["axis"] = {"size": CHANNELS, "offset": 10_000.0, "scale": 1000.0, "units": "meV"}
        elif variant == "no-cover":
            header["axis"]["offset"] = 30.0
        elif variant == "units":
            header["axis"]["units"] = "nm"
        elif variant == "unknown-rec":
            header["recognizers"] = ["nope"]
        elif variant == "wrong-rec":
            header["recognizers"] = ["frame-test"]
        elif variant == "too-big":
            header["shape"] = [8192, 8192]  # 64 Mi pixels, over max_scan_pixels
        elif variant == "budget":
            header["shape"] = [4096, 4096]  # fits max_scan_pixels, not the (small) memory budget
        # protocol 1.1: a default recognizer that cannot take the axis (no-cover, units) is left out and
        # pca runs; named ones (unknown-rec, wrong-rec) refuse the scan
        plan.openable = variant in ("eels", "movie", "pca", "eels-fine", "eels-mev", "no-cover", "units")
        if plan.takes == "frames" and (min(plan.shape) < 2 or min(plan.shape) * zoom < 2):
            plan.openable = False  # too small to recognize, in frame or model pixels: refused at scan_start
        msg = Msg("scan_start", [], sid=sid, owner=ch.pick(self.owners), plan=plan, what=f"scan_start {variant}")
        meta = ch.pick(["none"] * 24 + ["small", "small", "deep", "wide", "bytes", "nan", "inf", "nested-bytes"])
        if meta == "small":
            header["meta"] = {"operator": "fuzz", "n": 3, "x": 0.5, "ok": True, "none": None, "list": [1, "a", [2.0]]}
        elif meta == "deep":
            levels = ch.int(6, 11)
            header["meta"] = nested_map(levels)
            msg.header_ok = levels <= 8  # "nested at most 8 deep"
            msg.what += f", meta {levels} deep"
        elif meta == "wide":
            keys = ch.pick([64, 65])
            header["meta"] = {f"k{i}": i for i in range(keys)}
            msg.header_ok = keys <= 64
            msg.what += f", meta with {keys} keys"
        elif meta != "none":
            header["meta"] = {"bytes": {"raw": b"\x00\x01"}, "nan": {"x": math.nan}, "inf": {"x": [math.inf]},
                              "nested-bytes": {"a": [{"b": b"x"}]}}[meta]
            msg.header_ok = False
            msg.what += f", meta {meta}"
        if ch.chance(12):
            self._mutate(header, msg, START_FIELDS(header))
        self.clean[sid] = ch.chance(30) if isinstance(sid, str) else False
        msg.frames = [_pack(header)]
        if variant == "buffers":
            msg.frames.append(b"\x00" * 8)
        if sid in self.sids and msg.header_ok:
            self.view_started(sid, msg)
        return msg

    def view_started(self, sid: str, msg: Msg) -> None:
        """Hook: a valid scan_start was built (the barrage sender opens its view of the scan here)."""

    def data(self) -> Msg:
        ch = self.ch
        sid = self._sid()
        scan = self.view(sid)
        plan = scan.plan if scan is not None and scan.plan.takes == "spectra" else Plan("spectra", (4, 4))
        if scan is not None and scan.plan.takes == "frames" and ch.chance(80):
            return self.frame(sid)
        self._be_careful(sid, scan)
        seq = self._seq(scan)
        rows, cols = plan.shape
        if scan is not None and valid_index(seq) and seq < rows and not self.fault(30):
            row, col0, n = seq, 0, cols  # the line of a clean raster scan
        else:
            n = ch.int(1, cols)
            col0 = ch.int(0, cols - n)
            row = ch.int(0, rows - 1)
        channels, comps = plan.channels, plan.components
        if self.fault(5):
            row = rows + ch.int(0, 2)
        if self.fault(5):
            col0 = cols - n + ch.int(1, 2)
        if self.fault(3):
            channels += ch.pick([-1, 1])
        if self.fault(3):
            comps = 0 if comps else ch.pick([1, 2])
        dtype = ch.pick(["float32", "float32", "float64", "uint16", "int32"])
        classes = [ch.int(0, 2) for _ in range(n)]
        edges = np.linspace(0, max(channels, 1), 4).astype(int)
        values = np.zeros((n, channels) + ((comps,) if comps else ()), np.float64)
        for i, k in enumerate(classes):
            values[i, edges[k]:edges[k + 1]] = 100.0
        values = values.astype(DTYPES[dtype])
        header = {"v": 1, "kind": "data", "scan_id": sid, "seq": seq, "row": row, "shape": list(values.shape),
                  "dtype": dtype}
        if col0 or ch.chance(50):
            header["col0"] = col0
        if ch.chance(10):
            header["t_ns"] = ch.pick([0, time.time_ns(), -5, 2**63])
        msg = Msg("data", [], sid=sid, seq=seq, owner=self._owner(scan), row=row, col0=col0, n=n,
                  channels=channels, components=comps, what=f"data seq {seq!r} row {row} cols {col0}+{n}")
        msg.frames = [_pack(header), *self._payload(values, msg)]
        if self.fault(10):
            self._mutate(header, msg, DATA_FIELDS)
            msg.frames[0] = _pack(header)
        self._sent(scan, msg)
        return msg

    def frame(self, sid: Any = None) -> Msg:
        ch = self.ch
        sid = sid if sid is not None else self._sid()
        scan = self.view(sid)
        plan = scan.plan if scan is not None and scan.plan.takes == "frames" else Plan("frames", (8, 8))
        self._be_careful(sid, scan)
        seq = self._seq(scan)
        last = scan.last_frame_sent if scan is not None else -1
        frame = last + 1 + ch.pick([0, 0, 1, 2]) if not self.fault(8) else max(0, last - ch.int(0, 1))
        shape = plan.shape if not self.fault(8) else (plan.shape[0], plan.shape[1] + 1)
        dtype = ch.pick(["float32", "float32", "float64", "uint16"])
        image = _image(shape) * (1000.0 if dtype == "uint16" else 1.0)
        values = image.astype(DTYPES[dtype])
        header = {"v": 1, "kind": "frame", "scan_id": sid, "seq": seq, "frame": frame, "shape": list(shape),
                  "dtype": dtype}
        msg = Msg("frame", [], sid=sid, seq=seq, owner=self._owner(scan), frame=frame, frame_shape=tuple(shape),
                  what=f"frame seq {seq!r} frame {frame} {shape}")
        msg.frames = [_pack(header), *self._payload(values, msg)]
        if self.fault(10):
            self._mutate(header, msg, FRAME_FIELDS)
            msg.frames[0] = _pack(header)
        self._sent(scan, msg)
        return msg

    def _sent(self, scan, msg: Msg) -> None:
        if scan is not None and valid_index(msg.seq):
            scan.sent.add(msg.seq)
            if msg.kind == "frame" and msg.header_ok and not msg.oversized and msg.payload_ok:
                scan.last_frame_sent = max(scan.last_frame_sent, msg.frame)

    def _payload(self, values: np.ndarray, msg: Msg) -> list:
        buffers = self._buffers(values, msg)
        msg.oversized = sum(map(len, buffers)) > LIMITS.max_payload_bytes
        return buffers

    def _buffers(self, values: np.ndarray, msg: Msg) -> list:
        ch = self.ch
        how = "ok" if self._careful else ch.pick(["ok"] * 16 + ["nan", "inf", "short", "long", "none", "two",
                                                                "empty", "oversized"])
        raw = values.tobytes()
        if how == "ok" or (how in ("nan", "inf") and values.dtype.kind != "f"):
            return [raw]
        msg.payload_ok = False
        msg.what += f", payload {how}"
        if how in ("nan", "inf"):
            bad = values.copy()
            bad.flat[ch.int(0, bad.size - 1)] = math.nan if how == "nan" else -math.inf
            return [bad.tobytes()]
        if how == "oversized":
            return [raw + b"\x00" * (LIMITS.max_payload_bytes + 1 - len(raw))]
        return {"short": [raw[:-1]], "long": [raw + b"\x00" * values.dtype.itemsize], "none": [],
                "two": [raw, raw], "empty": [b""]}[how]

    def end(self, sid: Any = None) -> Msg:
        ch = self.ch
        sid = sid if sid is not None else self._sid()
        scan = self.view(sid)
        self._be_careful(sid, scan)
        sent = scan.next_seq if scan is not None else ch.int(0, 4)
        n = sent if self._careful else ch.pick([sent, sent, sent, max(0, sent - ch.int(1, 2)), sent + ch.int(1, 3),
                                                HUGE])
        header = {"v": 1, "kind": "scan_end", "scan_id": sid, "n_messages": n}
        msg = Msg("scan_end", [], sid=sid, owner=self._owner(scan), n_messages=n, what=f"scan_end n={n}")
        if self.fault(10):
            self._mutate(header, msg, END_FIELDS)
        msg.frames = [_pack(header)]
        if self.fault(5):
            msg.frames.append(b"junk")  # a scan_end takes no buffers; it is still a scan_end
        return msg

    def garbage(self) -> Msg:
        ch = self.ch
        how = ch.pick(["bytes", "list", "int", "str", "nil", "intkey", "binkeys", "empty", "huge-header",
                       "17-frames", "truncated", "trailing"])
        header = {"v": 1, "kind": "data", "scan_id": ch.pick(self.sids), "seq": 0, "row": 0,
                  "shape": [1, CHANNELS], "dtype": "float32"}
        frames = {
            "bytes": lambda: [ch.bytes()],
            "list": lambda: [_pack([1, 2, 3])],
            "int": lambda: [_pack(17)],
            "str": lambda: [_pack("scan_start")],
            "nil": lambda: [_pack(None)],
            "intkey": lambda: [_pack({1: 2, "v": 1})],
            "binkeys": lambda: [_pack({b"v": 1, b"kind": b"data"})],
            "empty": lambda: [],
            "huge-header": lambda: [_pack({**header, "pad": "x" * 66_000})],
            "17-frames": lambda: [_pack(header)] + [b"\x00" * 4] * 16,
            "truncated": lambda: [_pack(header)[:-3]],
            "trailing": lambda: [_pack(header) + b"\x01"],
        }[how]()
        readable = how == "17-frames" and READ_IDS_OF_TOO_MANY_FRAMES
        return Msg("garbage", frames, sid=header["scan_id"] if readable else None, seq=0 if readable else None,
                   header_ok=False, readable=readable, oversized=how == "17-frames", what=f"garbage {how}")

    def other_kind(self) -> Msg:
        """Valid headers of kinds the ingest socket does not take."""
        ch = self.ch
        sid = ch.pick(self.sids)
        header = ch.pick([{"v": 1, "kind": "request", "id": 1, "op": "status"},
                          {"v": 1, "kind": "event", "scan_id": sid, "code": "lost", "reason": "fake", "seq": 0},
                          {"v": 1, "kind": "reply", "op": "status", "ok": True}])
        return Msg(header["kind"], [_pack(header)], sid=header.get("scan_id"), owner=ch.pick(self.owners),
                   what=f"a {header['kind']} on the ingest socket")


#: whether a message of more than 16 frames is refused with its (valid) identifiers read from the header
READ_IDS_OF_TOO_MANY_FRAMES = False

REQUIRED = {"data": ("seq", "row", "shape", "dtype"), "frame": ("seq", "frame", "shape", "dtype"),
            "scan_end": ("n_messages",), "scan_start": ("modality", "shape", "axis", "pixel_size")}
DATA_FIELDS = {"seq": BAD_INTS, "row": BAD_INTS, "col0": BAD_INTS, "dtype": BAD_DTYPES,
               "shape": ("4x4", [0, CHANNELS], [1], [1, CHANNELS, 0], [1, CHANNELS, 17], [1, 2, 3, 4],
                         [MAX_EDGE + 1, 1], None, [1.0, CHANNELS], [True, CHANNELS], [-1, CHANNELS]),
               "t_ns": ("x", 1.5, True, [1])}
FRAME_FIELDS = {"seq": BAD_INTS, "frame": BAD_INTS, "dtype": BAD_DTYPES,
                "shape": ("8x8", [0, 8], [8], [8, 8, 1], [MAX_EDGE + 1, 8], None, [8.0, 8], [True, 8]),
                "t_ns": ("x", 1.5, "1")}
END_FIELDS = {"n_messages": BAD_INTS}


def START_FIELDS(header: dict) -> dict[str, tuple]:
    """Invalid values of a scan_start's fields (axis and pixel_size: invalid nested objects)."""
    axis = header.get("axis") or dict(BAND_AXIS)
    fields = {
        "modality": ("", "a b", "x" * 65, 5, None, ["eels"]),
        "shape": ("4x4", [0, 3], [1], [1, 2, 3], [MAX_EDGE + 1, 1], None, [1.0, 2], [True, 2], [-1, 2]),
        "axis": tuple({**axis, k: v} for k, vs in (("size", ("60", 0, MAX_EDGE + 1, 60.0, True)),
                                                   ("offset", ("10", math.nan, math.inf, None)),
                                                   ("scale", (0, -1.0, math.nan, math.inf, "1")),
                                                   ("units", ("x" * 17, 5)), ("extra", (1,)))
                      for v in vs) + ({k: v for k, v in axis.items() if k != "units"}, [1, 2]),
        "pixel_size": ({"size": 0.0, "units": "nm"}, {"size": -1.0, "units": "nm"}, {"size": math.nan, "units": "nm"},
                       {"size": "0.02", "units": "nm"}, {"size": 0.02}, {"size": 0.02, "units": ""}),
        "components": ([], ["a"] * 17, ["a b"], "amplitude", [1]),
        "policy": ("newest", "", None, 1),
        "frames": (0, 2**31 + 1, "3", 1.0, True, -1),
        "recognizers": (["a"] * 9, "band", [5], ["a b"]),
        "meta": ([1], "x", 5),
    }
    if "pixel_size" in header:  # both axis and pixel_size; or components on an imaging scan
        fields["axis"] = (dict(BAND_AXIS),)
        fields["components"] += (["amplitude"],)
    else:
        fields["pixel_size"] += ({"size": 0.02, "units": "nm"},)
    return fields


# --------------------------------------------------------------------------- the model: what must happen


@dataclass
class Scan:
    """One scan the service opened: what the sender did and what its summary must say."""

    sid: str
    owner: str | None
    plan: Plan
    t_last: float = 0.0
    recognizers: list[str] = field(default_factory=list)
    next_seq: int = 0
    sent: set[int] = field(default_factory=set)  # every seq named so far (for duplicates)
    last_frame_sent: int = -1
    accepted: set[int] = field(default_factory=set)  # accepted and (still) below n_messages
    beyond: set[int] = field(default_factory=set)  # accepted, then at or beyond scan_end's n_messages
    rejected: set[int] = field(default_factory=set)
    pixels_in: int = 0
    covered: set[tuple[int, int]] = field(default_factory=set)  # spectral pixels of accepted lines
    last_frame: int = -1
    n_messages: int | None = None
    skipped_events: set[int] = field(default_factory=set)
    results: collections.Counter = field(default_factory=collections.Counter)  # (recognizer, seq) -> count
    lost_event: Event | None = None
    summary: ScanSummary | None = None

    @property
    def silent(self) -> bool:
        return not self.accepted and not self.rejected and self.n_messages is None

    def verdict(self, m: Msg) -> str:
        """accept, reject or duplicate: a valid data or frame header from the scan's owner."""
        p = self.plan
        if m.seq in self.accepted or m.seq in self.rejected:
            return "duplicate"
        if self.n_messages is not None and m.seq >= self.n_messages or m.seq >= p.max_messages:
            return "reject"
        if m.kind == "data":
            rows, cols = p.shape
            if (p.takes != "spectra" or m.channels != p.channels or m.components != p.components
                    or m.row >= rows or m.col0 + m.n > cols):
                return "reject"
        elif (p.takes != "frames" or m.frame_shape != p.shape or (p.frames is not None and m.frame >= p.frames)
              or m.frame <= self.last_frame):
            return "reject"
        return "accept" if m.payload_ok else "reject"

    def accept(self, m: Msg) -> None:
        self.accepted.add(m.seq)
        self.pixels_in += m.pixels
        if m.kind == "data":
            self.covered.update((m.row, c) for c in range(m.col0, m.col0 + m.n))
        else:
            self.last_frame = m.frame

    def end(self, n: int) -> set[int]:
        self.n_messages = n
        beyond = {s for s in self.accepted if s >= n}
        self.accepted -= beyond
        self.beyond |= beyond
        self.rejected |= beyond
        return beyond


def check_fates(expected: int, fates: dict[str, set[int]], lost_ranges) -> None:
    """Every seq of ``[0, expected)`` has exactly one fate; only rejected seqs lie beyond (AssertionError)."""
    runs = [(s, s + 1, name) for name, seqs in fates.items() for s in seqs] + [(a, b, "lost") for a, b in lost_ranges]
    runs.sort()
    at, prev = 0, None
    for a, b, name in runs:
        assert a < b, f"empty or reversed {name} run [{a}, {b})"
        if prev is not None and a < prev[1]:
            raise AssertionError(f"seq {a} is both {prev[2]} and {name}")
        if b > expected and name != "rejected":
            raise AssertionError(f"{name} [{a}, {b}) reaches beyond the {expected} expected seqs")
        if a < expected:
            assert a == at, f"seqs [{at}, {a}) have no fate (expected {expected})"
            at = b
        prev = (a, b, name)
    assert at >= expected, f"seqs [{at}, {expected}) have no fate"


def check_summary(scan: Scan, s: ScanSummary) -> None:
    """The summary says exactly what the sender's model says, and accounts for every seq."""
    note = f"scan {scan.sid} ({scan.plan}): {s!r:.1500}"
    rows, cols = scan.plan.shape
    if scan.n_messages is None:
        assert s.state == "timed_out" and s.messages_sent is None, note
        expected = max(scan.accepted | scan.rejected, default=-1) + 1
    else:
        assert s.state in ("complete", "incomplete") and s.messages_sent == scan.n_messages, note
        expected = scan.n_messages
    rejected = {r.seq for r in s.rejected}
    assert len(rejected) == len(s.rejected), f"a seq rejected twice: {note}"
    assert rejected == scan.rejected, f"rejected {sorted(rejected)}, the model says {sorted(scan.rejected)}: {note}"
    skipped = set(s.skipped)
    assert len(skipped) == len(s.skipped) and skipped <= scan.accepted | scan.beyond, note
    # a frame skipped before scan_end put it beyond n_messages is rejected in the end (one fate per seq)
    assert skipped == scan.skipped_events - scan.beyond, (f"skipped {sorted(skipped)}, events "
                                                          f"{sorted(scan.skipped_events)}: {note}")
    if scan.plan.policy != "latest":
        assert not skipped, note
    recognized = scan.accepted - skipped
    runs = [tuple(r) for r in s.lost_ranges]
    assert all(b < c for (_, b), (c, _) in zip(runs, runs[1:])), f"lost runs not sorted and merged: {note}"
    assert s.n_lost == sum(b - a for a, b in runs), note
    first = [seq for a, b in runs for seq in range(a, min(b, a + LIST_LIMIT))][:LIST_LIMIT]
    assert s.lost == first, f"lost lists {s.lost[:8]}... not the first of the runs {runs[:4]}: {note}"
    check_fates(expected, {"recognized": recognized, "rejected": rejected, "skipped": skipped}, runs)
    assert s.messages_received == len(scan.accepted) + len(rejected), note
    assert s.pixels_received == scan.pixels_in, note
    if scan.plan.takes == "spectra":
        assert s.pixels_expected == rows * cols and s.pixels_recognized == len(scan.covered), note
    else:
        # frames recognized, with or without those that scan_end then put beyond n_messages (rejected)
        # a movie never counts more frames than it can have (``frames``, or 2**53 pixels in all)
        most = scan.plan.frames if scan.plan.frames is not None else 2**53 // (rows * cols)
        done = {min(len((scan.accepted | scan.beyond) - scan.skipped_events), most), min(len(recognized), most)}
        assert s.pixels_expected == min(expected, most) * rows * cols, note
        assert s.pixels_recognized in {d * rows * cols for d in done}, note
    assert s.pixels_recognized <= s.pixels_expected, f"more pixels recognized than expected: {note}"
    clean = (not runs and not rejected and not skipped and scan.n_messages is not None
             and s.pixels_received == s.pixels_expected == s.pixels_recognized)
    assert (s.state == "complete") == clean, note
    assert set(s.recognizers) == set(scan.recognizers), note
    if s.n_lost:
        assert scan.lost_event is not None and scan.lost_event.seqs == s.lost, note
    else:
        assert scan.lost_event is None, note
    # one result per recognizer for every seq that was recognized (beyond ones too: they were, before scan_end)
    done = (scan.accepted | scan.beyond) - scan.skipped_events
    for name in scan.recognizers:
        got = {seq for (rec, seq) in scan.results if rec == name}
        assert got == done, f"{name} published results for {sorted(got)}, recognized {sorted(done)}: {note}"
    assert all(n == 1 for n in scan.results.values()), f"a result published twice: {scan.results}: {note}"


def check_publication(p) -> None:
    """What the server would send: it encodes, decodes strictly, and its topic names its scan."""
    header, _ = decode(encode(p.header, p.arrays), Limits(max_payload_bytes=2**31))
    assert header == p.header
    sid = getattr(p.header, "scan_id", None)
    if isinstance(p.header, Event):
        assert p.topic == topics.event_topic(sid), p
    else:
        assert sid is not None and p.topic.startswith(topics.scan_prefix(sid)), p


# --------------------------------------------------------------------------- level 1: the scan manager


@pytest.fixture(autouse=True)
def quiet():
    """Thousands of refused messages are each logged by the service: not in the test report."""
    log = logging.getLogger("scanlens")
    level = log.level
    log.setLevel(logging.CRITICAL)
    yield
    log.setLevel(level)


@pytest.fixture(scope="module")
def recognizers(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-models")
    band = open_recognizer(write_band_model(d / "band.onnx"), threads=1)
    frame = open_recognizer(write_frame_model(d / "frame.onnx"), threads=1)
    return {band.name: band, frame.name: frame}


class Harness(ManagerHarness):
    """The test kit's harness; a result that fails to be handled is recorded (the worker would only log it)."""

    errors: list

    async def _on_result(self, item, outputs, error) -> None:
        if error is not None:
            self.errors.append(f"inference failed for {item.scan_id} seq {item.seq}: {error}")
        try:
            await super()._on_result(item, outputs, error)
        except Exception as exc:
            self.errors.append(f"handling the result of {item.scan_id} seq {item.seq}: {exc!r}")
            raise


class Fuzz:
    """Runs messages through the manager as the server does and checks each outcome against the model."""

    def __init__(self, h: Harness, limits: dict[str, Any]):
        self.h, self.m, self.lim = h, h.manager, limits
        self.open: dict[str, Scan] = {}
        self.closed: list[Scan] = []
        self.ever_closed: set[str] = set()
        self.cursor = 0
        self.events: collections.Counter[str] = collections.Counter()
        self.forbidden = 0
        self.started = 0

    def view(self, sid: Any) -> Scan | None:
        return self.open.get(sid) if isinstance(sid, str) else None

    async def send(self, msg: Msg) -> None:
        sid = msg.sid if valid_id(msg.sid) else None
        scan = self.open.get(sid) if sid is not None else None
        assert set(self.m.open_scans) == set(self.open), "the publications and the manager disagree on open scans"
        decoded, exc = False, None
        try:
            header, buffers = decode(msg.frames, LIMITS)
            decoded = True
            out = await self.m.ingest(header, buffers, time.perf_counter(), owner=msg.owner)
        except ProtocolError as e:  # anything else escaping is a failure of the test
            exc = e
            out = self.m.unreadable(e, msg.owner)
        self.h.published += out
        what = f"{msg.what} (owner {msg.owner}): {exc.code + ': ' + exc.reason if exc else 'accepted'}"
        if not decoded:
            self._unreadable(msg, scan, exc, out, what)
        else:
            assert msg.header_ok and not msg.oversized, f"decode accepted an invalid message: {what}"
            self._decoded(msg, sid, scan, exc, out, what)
        self.absorb()

    def _unreadable(self, msg: Msg, scan: Scan | None, exc: ProtocolError, out, what: str) -> None:
        assert not msg.header_ok or msg.oversized, f"a valid message was refused: {what}"
        assert exc.code in ("bad_message", "oversized"), what
        assert exc.scan_id in (None, msg.sid) and exc.seq in (None, msg.seq), f"identifiers not as sent: {what}"
        if msg.readable:  # identifiers that are valid are read, whatever else is wrong
            assert exc.scan_id == (msg.sid if valid_id(msg.sid) else None), what
            assert exc.seq == (msg.seq if valid_index(msg.seq) else None), what
        (ev,) = [p.header for p in out]
        if msg.kind == "scan_start" and exc.scan_id is not None:
            assert ev.code == "scan_rejected" and ev.scan_id == exc.scan_id, f"scan_start not answered: {what}"
        else:
            assert ev.code == exc.code and ev.scan_id == exc.scan_id, what
        if (scan is not None and exc.scan_id == scan.sid and exc.seq is not None and msg.kind != "scan_start"
                and msg.owner == scan.owner and exc.seq not in scan.accepted):
            scan.rejected.add(exc.seq)  # readable identifiers of the scan's owner: rejected, not lost

    def _decoded(self, msg: Msg, sid: str | None, scan: Scan | None, exc, out, what: str) -> None:
        kind = msg.kind
        if kind not in INGEST_KINDS:
            assert exc is not None and exc.code == "bad_message" and "not accepted on the ingest" in exc.reason, what
            return
        assert sid is not None, what
        if kind == "scan_start":
            answer, *more = [p.header for p in out]
            if isinstance(answer, ScanStarted) and answer.skipped:  # 1.1: the skipped recognizers, said once
                (skip,) = more
                assert skip.code == "recognizers_skipped" and skip.scan_id == sid and skip.level == "warning", what
            else:
                assert not more, what
            if exc is None:
                assert scan is None and msg.plan.openable and len(self.open) < self.lim["max_open_scans"], what
                assert isinstance(answer, ScanStarted) and answer.scan_id == sid, what
                self.open[sid] = Scan(sid, msg.owner, msg.plan, t_last=self.h.clock.now,
                                      recognizers=list(answer.recognizers))
                self.started += 1
            else:
                assert exc.code == "scan_rejected" and isinstance(answer, Event), what
                assert answer.code == "scan_rejected" and answer.scan_id == sid, what
                assert (scan is not None or not msg.plan.openable or len(self.open) >= self.lim["max_open_scans"]
                        or "memory budget" in exc.reason), f"a scan_start refused for no reason: {what}"
            return
        if scan is None:
            # data for a scan that closed is late, for one never started unknown; a scan_end is unknown either way
            code = "late" if sid in self.ever_closed and kind != "scan_end" else "unknown_scan"
            assert exc is not None and exc.code == code, f"expected {code}: {what}"
            return
        if msg.owner != scan.owner:
            assert exc is not None and exc.code == "forbidden", f"a foreign sender got through: {what}"
            self.forbidden += 1
            return
        scan.t_last = self.h.clock.now
        if kind == "scan_end":
            if scan.n_messages is not None:
                assert exc is not None and exc.code == "bad_message" and "second scan_end" in exc.reason, what
                return
            assert exc is None, what
            beyond = scan.end(msg.n_messages)
            if beyond:
                ev = out[0].header
                assert ev.code == "data_rejected" and ev.seqs == sorted(beyond)[:LIST_LIMIT], what
            return
        verdict = scan.verdict(msg)
        if verdict == "accept":
            assert exc is None, f"a valid message was rejected: {what}"
            scan.accept(msg)
            assert all(isinstance(p.header, Event) and p.header.code == "skipped" for p in out), what
        else:
            assert exc is not None and exc.code == "data_rejected", f"expected {verdict}: {what}"
            if verdict == "reject":
                scan.rejected.add(msg.seq)
            else:
                assert "already received" in exc.reason, what

    def absorb(self) -> None:
        """Check what was published since the last call, and what the manager holds now."""
        new, self.cursor = self.h.published[self.cursor:], len(self.h.published)
        for p in new:
            check_publication(p)
            header = p.header
            if isinstance(header, Event):
                self.events[header.code] += 1
                assert header.code != "internal", f"internal error: {header.reason}"
                if header.code == "skipped":
                    self.open[header.scan_id].skipped_events.add(header.seq)
                elif header.code == "lost":
                    self.open[header.scan_id].lost_event = header
            elif isinstance(header, (Maps, FrameResult)):
                self.open[header.scan_id].results[(header.recognizer, header.seq)] += 1
            elif isinstance(header, ScanSummary):
                scan = self.open.pop(header.scan_id, None)
                assert scan is not None, f"a summary for a scan that is not open: {header.scan_id}"
                scan.summary = header
                check_summary(scan, header)
                self.closed.append(scan)
                self.ever_closed.add(scan.sid)
        assert not self.h.errors, self.h.errors
        ledger = self.m.ledger
        assert 0 <= ledger.used <= ledger.budget and ledger.peak <= ledger.budget
        held = sum(ledger.held(sid) for sid in {*self.m.open_scans, *self.m.closed_scans})
        assert ledger.used == held, f"the ledger says {ledger.used}, the scans hold {held}"

    def expire(self) -> None:
        now, lim = self.h.clock.now, self.lim
        due = {sid for sid, scan in self.open.items()
               if now - scan.t_last > (min(lim["scan_timeout_s"], lim["start_timeout_s"]) if scan.silent
                                       else lim["scan_timeout_s"])
               and not self.m.open_scans[sid].in_flight}
        out = self.m.expire()
        self.h.published += out
        closed = {p.header.scan_id for p in out if isinstance(p.header, ScanSummary)}
        assert closed == due, f"expire closed {sorted(closed)}, due were {sorted(due)}"
        self.absorb()

    async def idle(self) -> None:
        async with asyncio.timeout(20):
            while any(s.in_flight for s in self.m.open_scans.values()):
                await asyncio.sleep(0.001)
        self.absorb()

    async def finish(self) -> None:
        """Everything back, every scan past its timeout: every scan that started has exactly one summary."""
        await self.idle()
        self.h.clock.now += 10 * self.lim["scan_timeout_s"]
        self.expire()
        assert not self.open and not self.m.open_scans
        assert len(self.closed) == self.started and all(s.summary is not None for s in self.closed)
        c = self.m.counters
        assert c["scans_started"] == self.started and c["scans_closed"] == len(self.closed)
        assert c["foreign_messages"] == self.forbidden
        for code, n in self.events.items():
            assert c[f"event.{code}"] == n, code
        assert sum(v for k, v in c.items() if k.startswith("event.")) == sum(self.events.values())


#: Results come back only while the barrage waits (``idle``), never in the middle of other steps, so that
#: an example is deterministic (hypothesis replays and shrinks it): ingest never waits, the queues are large.
#: Work piles up between waits: scan_end, timeouts, frame skips and reused ids meet work still in flight.
WORKERS = WorkerOptions(queue_pixels=2**30, max_batch_pixels=4096, parallel=2)


def harness(recognizers, limits: dict[str, Any]) -> Harness:
    h = Harness(recognizers, manager_options={"workers": WORKERS}, **limits)
    h.errors = []
    return h


async def run_barrage(ch: Drawn, recognizers, limits: dict[str, Any]) -> Fuzz:
    h = harness(recognizers, limits)
    fuzz = Fuzz(h, limits)
    sender = Sender(ch, fuzz.view)
    async with h.serving():
        for step in range(MAX_STEPS):
            if step and not ch.chance(98):
                break
            op = ch.pick(["message"] * 10 + ["idle", "tick", "expire"])
            if op == "message":
                await fuzz.send(sender.next())
            elif op == "idle":
                await fuzz.idle()
            elif op == "tick":
                h.clock.now += ch.pick([0.5, 1.0, 2.5, 7.0])
            else:
                fuzz.expire()
        await fuzz.finish()
    return fuzz


@LONG
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_the_manager_accounts_for_every_message(recognizers, data) -> None:
    ch = Drawn(data)
    limits = dict(max_open_scans=ch.pick([3, 2, 4]), keep_closed_scans=ch.pick([8, 0, 1]),
                  memory_budget_bytes=ch.pick([2**20, 40_000, 8_192]), scan_timeout_s=6.0, start_timeout_s=2.0)
    asyncio.run(run_barrage(ch, recognizers, limits))


@LONG
@settings(settings.get_profile(PROFILE), max_examples=max(5, settings.get_profile(PROFILE).max_examples // 10))
@given(data=st.data())
def test_one_scan_id_over_and_over(recognizers, data) -> None:
    """One scan id, started, ended, timed out and reused, everything aimed at it."""
    ch = Drawn(data)
    limits = dict(max_open_scans=1, keep_closed_scans=1, memory_budget_bytes=2**20, scan_timeout_s=3.0,
                  start_timeout_s=1.0)

    async def run() -> None:
        h = harness(recognizers, limits)
        fuzz = Fuzz(h, limits)
        sender = Sender(ch, fuzz.view, sids=("only",), owners=(None, "alice"))
        async with h.serving():
            for step in range(MAX_STEPS):
                if step and not ch.chance(98):
                    break
                op = ch.pick(["message"] * 6 + ["idle", "tick", "expire"])
                if op == "message":
                    await fuzz.send(sender.next())
                elif op == "idle":
                    await fuzz.idle()
                elif op == "tick":
                    h.clock.now += ch.pick([0.5, 2.0, 4.0])
                else:
                    fuzz.expire()
            await fuzz.finish()

    asyncio.run(run())


# --------------------------------------------------------------------------- level 2: a real server


class BarrageSender(Sender):
    """The sender of the real-server barrage: it believes every valid scan_start opens its scan, and once
    it has sent a valid scan_end it never names that scan id again (a fresh id takes its place), so that
    what the service does with each message does not depend on when results come back."""

    def __init__(self, ch: Seeded):
        self.views: dict[str, Scan] = {}
        self.counter = 0
        super().__init__(ch, lambda sid: self.views.get(sid) if isinstance(sid, str) else None,
                         sids=["b0", "b1", "b2", "b3"], owners=(None,))

    def view_started(self, sid: str, msg: Msg) -> None:
        if msg.plan.openable and sid not in self.views:
            self.views[sid] = Scan(sid, None, msg.plan)

    def end(self, sid: Any = None) -> Msg:
        msg = super().end(sid)
        if msg.header_ok and msg.sid in self.sids:
            self.sids[self.sids.index(msg.sid)] = f"b{len(self.sids) + self.counter}"
            self.counter += 1
            self.views.pop(msg.sid, None)
        return msg


def replay(messages: list[Msg], answers: dict[str, list[Any]]) -> dict[str, list[Scan]]:
    """The scans the service opened (``answers``: per scan id, the answer to each of its scan_starts, in
    order) and, replaying the sender's messages in the order the service received them, what each summary
    must say: the rules of ``Fuzz`` without the per-message outcomes, which a socket does not return."""
    scans: dict[str, list[Scan]] = collections.defaultdict(list)
    current: dict[str, Scan] = {}
    pending = {sid: list(a) for sid, a in answers.items()}
    for m in messages:
        sid = m.sid if valid_id(m.sid) else None
        if sid is None:
            continue
        scan = current.get(sid)
        decodable = m.header_ok and not m.oversized
        if m.kind == "scan_start" and m.readable:  # every readable scan_start is answered, valid or not
            answer = pending[sid].pop(0)
            if isinstance(answer, ScanStarted):
                assert decodable and scan is None, f"scan {sid} started by {m.what}"
                current[sid] = Scan(sid, None, m.plan, recognizers=list(answer.recognizers))
                scans[sid].append(current[sid])
        elif not decodable:
            if (scan is not None and m.readable and valid_index(m.seq) and m.kind != "scan_start"
                    and m.seq not in scan.accepted):
                scan.rejected.add(m.seq)
        elif scan is not None and m.kind == "scan_end":
            if scan.n_messages is None:
                scan.end(m.n_messages)
        elif scan is not None and m.kind in ("data", "frame"):
            verdict = scan.verdict(m)
            if verdict == "accept":
                scan.accept(m)
            elif verdict == "reject":
                scan.rejected.add(m.seq)
    return scans


@LONG
@pytest.mark.parametrize("seed", [1, 2] if PROFILE == "ci" else range(1, 21))
async def test_a_real_server_survives_a_barrage_and_accounts_for_it(tmp_path, seed) -> None:
    """Mixed valid and invalid raw messages over one PUSH socket (plus undecodable junk over another):
    the service stays up, answers every scan_start exactly once, and every summary is what the sender's
    messages imply, with every seq accounted for exactly once."""
    models = tmp_path / "models"
    models.mkdir()
    write_band_model(models / "band.onnx")
    write_frame_model(models / "frame.onnx")
    # max_message_bytes as LIMITS in the harness; small scans only, so that the publish queue is deep
    settings = loopback_settings(models, scan_timeout_s=4.0, start_timeout_s=4.0, inference_parallel=2,
                                 max_message_bytes=LIMITS.max_payload_bytes, max_scan_pixels=4096)
    sender = BarrageSender(Seeded(seed))
    messages = [sender.next() for _ in range(BARRAGE)]
    received: list = []
    async with serving(settings) as server, connected(server) as (inst, sub, ctl):
        junk = type(inst)(server.endpoints["ingest"], linger_s=0)

        heard = [time.monotonic()]

        async def listen() -> None:
            while True:
                received.append(await sub.recv())
                heard[0] = time.monotonic()

        listener = asyncio.create_task(listen())
        try:
            for i, m in enumerate(messages):
                # what cannot be decoded at all goes over its own socket: a header over ZeroMQ's message size
                # limit drops the connection it came on (docs/protocol.md §6), with whatever was queued on it
                # (ZeroMQ has no message of no frames: the empty message goes as one empty frame)
                await (junk if m.kind == "garbage" else inst).sock.send_multipart(m.frames or [b""])
                if i % 8 == 0:
                    await asyncio.sleep(0)
            starts = collections.Counter(m.sid for m in messages if m.kind == "scan_start" and valid_id(m.sid)
                                         and m.readable)

            def answered() -> bool:
                got = collections.Counter(r.header.scan_id for r in received
                                          if isinstance(r.header, ScanStarted) or
                                          (isinstance(r.header, Event) and r.header.code == "scan_rejected"))
                opened = {r.header.scan_id for r in received if isinstance(r.header, ScanStarted)}
                summaries = {r.header.scan_id for r in received if isinstance(r.header, ScanSummary)}
                return all(got[sid] >= n for sid, n in starts.items()) and opened <= summaries

            async with asyncio.timeout(30):  # results, closes, and the timeouts of scans never ended
                while not answered():
                    assert not listener.done(), listener
                    assert time.monotonic() - heard[0] < 3, "the service went silent (no heartbeat for 3 s): it died"
                    await asyncio.sleep(0.05)
            status = await ctl.status()  # the service is up and answers
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            junk.close()
    # (the listener decodes everything as a client does, under the default limits: it would have stopped)
    internal = [r.header for r in received if isinstance(r.header, Event) and r.header.code == "internal"]
    assert not internal, internal
    answers: dict[str, list] = collections.defaultdict(list)
    for r in received:
        h = r.header
        if isinstance(h, ScanStarted) or (isinstance(h, Event) and h.code == "scan_rejected" and h.scan_id):
            answers[h.scan_id].append(h)
    for sid, n in starts.items():
        assert len(answers[sid]) == n, f"{n} scan_starts for {sid}, answered {answers[sid]}"
    scans = replay([m for m in messages if m.kind != "garbage"], answers)
    summaries = collections.defaultdict(list)
    for r in received:
        h = r.header
        if isinstance(h, ScanSummary):
            summaries[h.scan_id].append(h)
        elif isinstance(h, (Maps, FrameResult)):
            scans[h.scan_id][-1].results[(h.recognizer, h.seq)] += 1
        elif isinstance(h, Event) and h.code == "skipped":
            scans[h.scan_id][-1].skipped_events.add(h.seq)
        elif isinstance(h, Event) and h.code == "lost":
            scans[h.scan_id][-1].lost_event = h
    assert sum(map(len, scans.values())) == status["counters"]["scans_started"] >= 3
    print(f"seed {seed}: {len(messages)} messages, {len(scans)} scans:",
          dict(collections.Counter(s.state for v in summaries.values() for s in v)),
          "accepted", sum(len(s.accepted) for v in scans.values() for s in v),
          "rejected", sum(len(s.rejected) for v in scans.values() for s in v))
    for sid, opened in scans.items():
        (scan,) = opened  # no id is reused in this barrage
        (summary,) = summaries[sid]
        check_summary(scan, summary)
    assert set(summaries) == set(scans)
    assert not status["open_scans"] and status["counters"].get("event.internal", 0) == 0
