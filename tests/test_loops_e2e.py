"""Switching loops through the service: the demo maps J0, dJ and dh live, scored against ground truth."""

from __future__ import annotations

import json

import pytest

from scanlens.testing import run_cli


@pytest.mark.timeout(300)
async def test_demo_loops_meets_the_target(tmp_path):
    out = await run_cli("-c", "from scanlens.app.cli import main; main()", "demo", "--modality", "loops", "--json",
                        "--dwell-us", "0", "--out", str(tmp_path), timeout=280)
    report = json.loads(out)
    assert report["recognizers"] == ["loops-mlp", "pca"]
    assert min(report["r2_J0"], report["r2_dJ"], report["r2_dh"]) >= 0.9
    assert report["pixels"] == report["recognized"] == 64 * 64 and report["lost"] == report["rejected"] == 0
    assert (tmp_path / "demo-loops.png").stat().st_size > 10_000
