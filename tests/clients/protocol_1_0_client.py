# The client of docs/protocol.md §8 as it was in protocol 1.0 (frozen 2026-12-02, copied verbatim from
# the document at commit 52d3918). tests/test_protocol_doc.py runs it against today's service: a 1.0
# client keeps working against 1.1 (docs/protocol.md §9). Never edit it; the document's own client may
# move on.
import sys

import msgpack
import numpy as np
import zmq

ingest, publish, control = sys.argv[1:4]
ctx = zmq.Context()
ctx.setsockopt(zmq.RCVTIMEO, 20_000)  # never wait forever: raise zmq.Again if the service goes silent
ctx.setsockopt(zmq.LINGER, 1000)
push = ctx.socket(zmq.PUSH); push.connect(ingest)
sub = ctx.socket(zmq.SUB); sub.connect(publish)
sub.setsockopt(zmq.SUBSCRIBE, b"scan/doc-1/")
sub.setsockopt(zmq.SUBSCRIBE, b"service/status")
req = ctx.socket(zmq.REQ); req.connect(control)

def header(frames):
    return msgpack.unpackb(frames[0], raw=False)

# 1. wait for a heartbeat: from now on our subscription is live
while sub.recv_multipart()[0] != b"service/status":
    pass
sub.setsockopt(zmq.UNSUBSCRIBE, b"service/status")

# 2. ask which axis the EELS recognizers expect, then send on our own, finer axis
req.send(msgpack.packb({"v": 1, "kind": "request", "id": 1, "op": "models"}))
models = header(req.recv_multipart())["result"]["models"]
rec, card = next((name, card) for name, card in models.items() if card["modality"] == "eels"
                 and any(o["role"] == "class_probabilities" for o in card["outputs"]))  # an EELS classifier
m = card["input"]["axis"]
lo, hi = m["offset"] - 2.0, m["offset"] + (m["size"] - 1) * m["scale"] + 2.0  # a margin on both sides
axis = {"offset": lo, "scale": m["scale"] / 2, "units": m["units"]}
axis["size"] = int((hi - lo) / axis["scale"]) + 1
rows, cols = 4, 8
push.send(msgpack.packb({"v": 1, "kind": "scan_start", "scan_id": "doc-1", "modality": "eels",
                         "shape": [rows, cols], "axis": axis, "recognizers": [rec],
                         "meta": {"client": "protocol.md"}}))
rng = np.random.default_rng(0)
for row in range(rows):
    line = rng.poisson(100.0, size=(cols, axis["size"])).astype("<f4")   # C order, little-endian
    push.send_multipart([msgpack.packb({"v": 1, "kind": "data", "scan_id": "doc-1", "seq": row,
                                        "row": row, "shape": [cols, axis["size"]], "dtype": "float32"}),
                         line.tobytes()])
push.send(msgpack.packb({"v": 1, "kind": "scan_end", "scan_id": "doc-1", "n_messages": rows}))

# 3. collect maps until the summary
classes = np.full((rows, cols), 255, np.uint8)
while True:
    topic, *frames = sub.recv_multipart()
    h = header(frames)
    if h["kind"] == "maps":
        buffers = dict(zip([a["name"] for a in h["arrays"]], frames[1:]))
        classes[h["row"], h["col0"]:h["col0"] + h["n_pixels"]] = np.frombuffer(buffers["class"], "<u1")
    elif h["kind"] == "event":
        print("event:", h["code"], h["reason"])
        if h["code"] == "scan_rejected":
            sys.exit(f"scan rejected: {h['reason']}")
    elif h["kind"] == "scan_summary":
        break
assert h["state"] == "complete" and h["pixels_recognized"] == rows * cols, h
assert (classes != 255).all()

# 4. the same maps from the control socket, as a late joiner would get them
req.send(msgpack.packb({"v": 1, "kind": "request", "id": 2, "op": "snapshot", "scan_id": "doc-1"}))
reply, *buffers = req.recv_multipart()
reply = msgpack.unpackb(reply, raw=False)
snap = {a["name"]: np.frombuffer(b, np.dtype(a["dtype"]).newbyteorder("<")).reshape(a["shape"])
        for a, b in zip(reply["arrays"], buffers)}
assert (snap[f"{rec}/class"] == classes).all() and snap[f"{rec}/filled"].all()
novel = h["recognizers"][rec].get("novel_fraction")  # absent for a model without novelty
print("ok", h["pixels_recognized"], "pixels, p99", round(h["latency_ms_p99"], 3), "ms, novel", novel)
for s in (push, sub, req):
    s.close(linger=0)
ctx.term()
