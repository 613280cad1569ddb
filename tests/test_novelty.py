"""Novelty in the service (issue 11): a model whose card has a novelty section publishes, per pixel, its
novelty score and a ``novel`` mask; the summary says what share was flagged, and a ``mostly_foreign``
event fires once per scan when more than half of what a recognizer has seen is novel. A model without
one is served without novelty, and ``scanlens models`` says so.

Real server, real sockets on loopback, the test kit's hand-built band model with its novelty output
(1 - the largest band share: 0 for a band spectrum, 2/3 for a flat one).
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from scanlens.protocol import ModelCard
from scanlens.protocol.messages import Event
from scanlens.testing import (BAND_NOVELTY_THRESHOLD, band_axis, band_spectra, connected, loopback_settings,
                              run_cli_result, serving, write_band_model)


@pytest.fixture
def novelty_dir(tmp_path):
    d = tmp_path / "novelty-models"
    d.mkdir()
    write_band_model(d / "band.onnx", novelty=True)
    return d


def flat(n: int) -> np.ndarray:
    return np.full((n, band_axis().size), 7.0, np.float32)


async def test_novel_pixels_are_mapped_counted_and_reported_once(novelty_dir):
    rows, cols = 4, 6
    # one run at a time: the event's count depends on the order lines are stored in, and two parallel
    # runs may finish out of order (docs/performance.md)
    settings = loopback_settings(novelty_dir, inference_parallel=1)
    async with serving(settings) as server, connected(server) as (inst, sub, ctl):
        async with inst.scan("mixed", "eels", (rows, cols), band_axis()) as scan:
            await scan.send_line(0, band_spectra(np.array([0, 1, 2, 0, 1, 2])))
            for row in (1, 2, 3):  # after row 1 half is novel (not more); after row 2, 12 of 18: the event
                await scan.send_line(row, flat(cols))
        result = await sub.collect_scan("mixed", timeout=20)
    maps = result.maps["band"]
    assert maps["novel"].dtype == np.uint8
    np.testing.assert_array_equal(maps["novel"], np.repeat([[0], [1], [1], [1]], cols, axis=1))
    np.testing.assert_allclose(maps["novelty"][0], 0.0, atol=1e-5)
    np.testing.assert_allclose(maps["novelty"][1:], 2 / 3, atol=1e-5)
    assert (maps["novelty"][1:] > BAND_NOVELTY_THRESHOLD).all()
    s = result.summary
    assert s.state == "complete"  # novelty is a warning about the answers, never a loss of data
    assert s.recognizers["band"].novel_fraction == pytest.approx(18 / 24)
    foreign = [e for e in result.events if isinstance(e, Event) and e.code == "mostly_foreign"]
    assert len(foreign) == 1, foreign
    assert foreign[0].level == "warning" and foreign[0].scan_id == "mixed" and "band" in foreign[0].reason
    assert "12 of the 18 pixels" in foreign[0].reason  # fired at row 2, not again at row 3


async def test_a_scan_of_its_own_kind_is_not_flagged(novelty_dir):
    truth = np.random.default_rng(3).integers(0, 3, (5, 8))
    async with serving(loopback_settings(novelty_dir)) as server, connected(server) as (inst, sub, ctl):
        async with inst.scan("own", "eels", truth.shape, band_axis()) as scan:
            for row in range(truth.shape[0]):
                await scan.send_line(row, band_spectra(truth[row]))
        result = await sub.collect_scan("own", timeout=20)
    assert not result.maps["band"]["novel"].any()
    assert result.summary.recognizers["band"].novel_fraction == 0.0
    assert not [e for e in result.events if isinstance(e, Event) and e.code == "mostly_foreign"]


async def test_a_model_without_novelty_is_served_without_it(model_dir, tmp_path):
    async with serving(loopback_settings(model_dir)) as server, connected(server) as (inst, sub, ctl):
        async with inst.scan("plain", "eels", (2, 3), band_axis()) as scan:
            for row in range(2):
                await scan.send_line(row, flat(3))
        result = await sub.collect_scan("plain", timeout=20)
    assert "novel" not in result.maps["band"] and "novelty" not in result.maps["band"]
    assert result.summary.recognizers["band"].novel_fraction is None
    assert not [e for e in result.events if isinstance(e, Event) and e.code == "mostly_foreign"]
    listing = await run_cli_result("-c", "from scanlens.app.cli import main; main()", "models", "--model-dir", str(model_dir), timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "novelty: none" in listing.stdout


async def test_models_lists_the_novelty_threshold(novelty_dir):
    listing = await run_cli_result("-c", "from scanlens.app.cli import main; main()", "models", "--model-dir", str(novelty_dir), timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert f"novel above {BAND_NOVELTY_THRESHOLD:g}" in listing.stdout


def test_a_card_must_name_its_novelty_output():
    base = dict(name="m", version="1", modality="eels", description="d", architecture="a",
                input={"name": "x", "axis": band_axis().model_dump(), "normalization": "none"})
    outputs = [{"name": "p", "role": "class_probabilities", "labels": ["a", "b"]},
               {"name": "nov", "role": "novelty", "labels": ["novelty"]}]
    with pytest.raises(ValidationError, match="no novelty section"):
        ModelCard(**base, outputs=outputs)
    with pytest.raises(ValidationError, match="one output of role novelty"):
        ModelCard(**base, outputs=outputs, novelty={"output": "score", "threshold": 1.0, "method": "m"})
    card = ModelCard(**base, outputs=outputs, novelty={"output": "nov", "threshold": 1.0, "method": "m"})
    assert card.novelty.threshold == 1.0
