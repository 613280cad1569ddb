"""Peak memory of ``scanlens demo --modality haadf`` with large frames in tiles against whole frames, same run.

    python bench/demo_memory.py [--frames 100] [--json]
    python bench/demo_memory.py --frames 3 --json                                   # small run, ~40 s

The demo runs the service, the subscriber and the scoring in one process (the simulated instrument is a
process of its own); its movie has 1024² frames. This runs it twice, each time in a fresh process:

1. whole frames (``SCANLENS_FRAME_TILE_PX=0``, what the service did before tiles): the baseline;
2. the defaults (frames longer than ``frame_tile_px`` = 512 model pixels in tiles, docs/operations.md,
   "Memory").

For each: the demo process's peak resident memory (``wait4``'s ``ru_maxrss``: the largest of the demo and
the simulator it waited for, which is the demo), its wall time, and the scores it printed (atom F1,
defect recall, the worst relative error of the diffusion constants), so that memory is never bought
with results. The ratio is tiled / whole. Prints a table, or one JSON object with --json; exits 1
when a demo run fails (its last line of error output is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("f1", "defect_recall", "diffusion_max_rel_error", "frames")


def demo_run(frames: int, env: dict[str, str]) -> dict[str, float]:
    """One ``scanlens demo --modality haadf --json`` in its own process: peak RSS (MB), wall (s), scores."""
    with tempfile.TemporaryDirectory(prefix="scanlens-demo-memory-") as out:
        cmd = [sys.executable, "-c", "from scanlens.app.cli import main; main()", "demo", "--modality", "haadf",
               "--frames", str(frames), "--out", out, "--json"]
        t0 = time.perf_counter()
        with open(Path(out) / "stdout", "w+b") as so, open(Path(out) / "stderr", "w+b") as se:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=so, stderr=se, env={**os.environ, **env})
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            so.seek(0), se.seek(0)
            stdout, stderr = so.read().decode(), se.read().decode()
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or ["(no error output)"])[-1]
            raise SystemExit(f"error: the demo exited {proc.returncode}: {last}")
        report = json.loads(stdout)
        scores = report.get("scores", report)
        return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1),
                **{k: scores.get(k) for k in SCORES}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--frames", type=int, default=100, help="frames of the demo's movie (default 100, the demo's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = ap.parse_args(argv)
    if a.frames < 2:
        ap.error("--frames must be at least 2")
    runs = {}
    for name, env in (("whole", {"SCANLENS_FRAME_TILE_PX": "0"}), ("tiled", {})):
        if not a.json:
            print(f"demo, {a.frames} frames of 1024², {name} ...", file=sys.stderr, flush=True)
        runs[name] = demo_run(a.frames, env)
    report = {"frames": a.frames, "whole": runs["whole"], "tiled": runs["tiled"],
              "ratio": round(runs["tiled"]["peak_rss_mb"] / runs["whole"]["peak_rss_mb"], 3),
              "target_mb": 600}
    if a.json:
        print(json.dumps(report))
        return 0
    print(f"{'':8} {'peak RSS':>10} {'wall':>8} {'atom F1':>8} {'defect recall':>14} {'max D error':>12}")
    for name in ("whole", "tiled"):
        r = runs[name]
        print(f"{name:8} {r['peak_rss_mb']:>7.0f} MB {r['wall_s']:>6.1f} s {r['f1']:>8.4f} "
              f"{r['defect_recall']:>14.4f} {r['diffusion_max_rel_error']:>12.3f}")
    print(f"tiled / whole peak RSS: {report['ratio']:.2f} (target: tiled <= {report['target_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
