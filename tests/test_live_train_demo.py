"""``scanlens demo --live-train`` as a user runs it (a subprocess): issue 12's must-show on EELS, the JSON it
prints, the figure, the model it keeps, and wrong input. The service, the trainer process and the simulated
instrument are all real; torch runs only in the trainer."""

from __future__ import annotations

import json

import numpy as np

from scanlens.pipeline import open_recognizer
from scanlens.testing import run_cli_result

DEMO = ("-c", "from scanlens.app.cli import main; main()", "demo")


async def test_eels_a_foreign_heterostructure_is_learnt_from_few_labels(tmp_path) -> None:
    result = await run_cli_result(*DEMO, "--live-train", "--json", "--dwell-us", "300", "--out", str(tmp_path),
                                  timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.strip().splitlines()  # one JSON object, nothing else on stdout
    report = json.loads(line)
    for key in ("novel_fraction_before", "labelled_fraction", "accuracy", "time_to_model_s", "lost"):
        assert report[key] is not None, key
    # the seed's CaTiO3 heterostructure: the shipped model calls it foreign, 3 % labels teach it
    assert report["novel_fraction_before"] >= 0.90
    assert report["labelled_fraction"] <= 0.03
    assert report["accuracy"] >= 0.98, report["accuracy_per_class"]
    assert report["lost"] == 0 and report["state"] == "complete"
    assert report["lines_redone"] > 0 and report["live_filled_fraction"] == 1.0
    assert (tmp_path / "demo-live-train-eels.png").stat().st_size > 10_000
    kept = open_recognizer(report["model"])
    assert kept.class_labels == ["CTO", "interface", "NGO"]
    training = kept.card.training
    assert training["live"] is True and training["scan_id"] == report["scan_id"]
    assert sum(training["label_counts"].values()) == report["labelled_pixels"]
    assert kept.card.novelty is not None
    assert np.isclose(training["labelled_fraction"], report["labelled_fraction"])


async def test_bepfm_a_class_the_shipped_model_does_not_know_is_learnt(tmp_path) -> None:
    result = await run_cli_result(*DEMO, "--live-train", "--modality", "bepfm", "--json", "--dwell-us", "300",
                                  "--out", str(tmp_path), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert "B. subtilis spores" in report["classes"]
    assert report["labelled_fraction"] <= 0.05
    assert report["accuracy"] >= 0.95, report["accuracy_per_class"]
    assert report["accuracy_per_class"]["B. subtilis spores"] >= 0.9  # recall on the new class
    assert report["lost"] == 0


async def test_wrong_input_is_one_line_and_a_non_zero_exit(tmp_path) -> None:
    result = await run_cli_result(*DEMO, "--live-train", "--modality", "loops", "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --live-train runs on eels or bepfm, not 'loops'"
    result = await run_cli_result(*DEMO, "--live-train", "--rows", "8", "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --live-train needs a scan of at least")
