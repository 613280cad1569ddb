"""Every benchmark runs with the small options its ``--help`` gives (figures are not checked here:
speed is measured by the benchmarks themselves, as ratios within one run, never by tests)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ["throughput", "frames", "dynamics", "curve", "soak", "demo_memory"]


def _small_run(name: str) -> list[str]:
    """The ``# small run`` command line that the benchmark's help text shows."""
    help_text = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=True).stdout
    (line,) = [ln for ln in help_text.splitlines() if "# small run" in ln]
    args = shlex.split(line.split("#")[0])
    assert args[:2] == ["python", f"bench/{name}.py"]
    return [sys.executable, str(ROOT / args[1]), *args[2:]]


@pytest.mark.parametrize("name", BENCHES)
def test_bench_small_run(name: str) -> None:
    out = subprocess.run(_small_run(name), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    key = {"throughput": "ratio", "frames": "ratio", "dynamics": "seeds", "curve": "ratio", "soak": "ok",
           "demo_memory": "ratio"}[name]
    assert key in report, sorted(report)
