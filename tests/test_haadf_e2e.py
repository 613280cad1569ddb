"""STEM movies through the service with the committed U-Net: the haadf demo, scored against truth."""

from __future__ import annotations

import json

import pytest

from .test_eels_e2e import run_cli


@pytest.mark.timeout(300)
async def test_demo_haadf_finds_atoms_and_defects(tmp_path):
    out = await run_cli("-c", "from service.app.cli import main; main()", "demo", "--modality", "haadf", "--json",
                        "--frames", "8", "--frame-ms", "0", "--out", str(tmp_path), timeout=280)
    report = json.loads(out)
    assert report["recognizers"] == ["stem-unet"] and report["frames"] == 8
    assert report["state"] == "complete" and report["lost"] == report["rejected"] == 0
    assert report["f1"] >= 0.98
    assert report["defect_accuracy"] >= 0.95 and report["defect_recall"] >= 0.9
    assert set(report["diffusion_true_px2_per_frame"]) == {"metal_vacancy", "chalcogen_vacancy", "dopant", "adatom"}
    assert (tmp_path / "demo-haadf.png").stat().st_size > 10_000
