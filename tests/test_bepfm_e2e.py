"""Band-excitation PFM through the service: the demo recognizes bacteria live on a multi-component scan."""

from __future__ import annotations

import json

import pytest

from scanlens.testing import run_cli


@pytest.mark.timeout(180)
async def test_demo_bepfm_meets_the_target(tmp_path):
    out = await run_cli("-c", "from scanlens.app.cli import main; main()", "demo", "--modality", "bepfm", "--json",
                        "--dwell-us", "0", "--out", str(tmp_path))
    report = json.loads(out)
    assert report["recognizers"] == ["bepfm-mlp", "pca"]
    assert report["accuracy"] >= 0.97
    assert report["pixels"] == report["recognized"] == 128 * 128 and report["lost"] == report["rejected"] == 0
    fractions = report["class_fractions"]
    assert set(fractions) == {"background", "M. lysodeikticus", "P. fluorescens"}
    assert 0.6 < fractions["background"] < 0.95  # cells are a minority of the pixels
    assert (tmp_path / "demo-bepfm.png").stat().st_size > 10_000
