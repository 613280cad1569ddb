"""Calibrated axes: resampling onto the model axis, unit conversion, and clear refusal when out of range."""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.pipeline import AxisError, AxisMap
from scanlens.protocol.messages import Axis, Event, ScanSummary
from scanlens.testing import band_axis, band_spectra

MODEL = Axis(size=60, offset=10.0, scale=1.0, units="eV")


def test_identical_axis_passes_through():
    m = AxisMap.build(MODEL, MODEL)
    assert m.identity
    x = np.arange(120, dtype=np.uint16).reshape(2, 60)
    out = m.apply(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("source", [
    Axis(size=512, offset=0.0, scale=0.25, units="eV"),
    Axis(size=300, offset=9.5, scale=0.2, units="eV"),
    Axis(size=100, offset=0.005, scale=0.0008, units="keV"),
])
def test_resampling_is_exact_for_linear_spectra(source):
    m = AxisMap.build(source, MODEL)
    factor = 1e3 if source.units == "keV" else 1.0
    e_src = (source.offset + np.arange(source.size) * source.scale) * factor
    e_model = MODEL.offset + np.arange(MODEL.size) * MODEL.scale
    spectra = np.stack([3.0 * e_src + 1.0, -0.5 * e_src + 100.0]).astype(np.float32)
    out = m.apply(spectra)
    np.testing.assert_allclose(out, np.stack([3.0 * e_model + 1.0, -0.5 * e_model + 100.0]), rtol=1e-5)
    # and agrees with numpy's interpolation on arbitrary data
    rng = np.random.default_rng(0)
    noisy = rng.poisson(50, size=(4, source.size)).astype(np.float32)
    ref = np.stack([np.interp(e_model, e_src, row) for row in noisy])
    np.testing.assert_allclose(m.apply(noisy), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("source,fragment", [
    (Axis(size=40, offset=10.0, scale=1.0, units="eV"), "10–49 eV"),
    (Axis(size=512, offset=12.0, scale=0.25, units="eV"), "12–139.75 eV"),
])
def test_out_of_range_axis_is_refused_naming_both_ranges(source, fragment):
    with pytest.raises(AxisError) as info:
        AxisMap.build(source, MODEL)
    assert fragment in str(info.value) and "10–69 eV" in str(info.value)


def test_incompatible_units_are_refused():
    with pytest.raises(AxisError, match="'Hz'"):
        AxisMap.build(Axis(size=60, offset=10.0, scale=1.0, units="Hz"), MODEL)


async def test_scan_on_another_axis_is_resampled_end_to_end(clients):
    inst, sub, _ = clients
    fine = Axis(size=400, offset=5.0, scale=0.2, units="eV")  # 5–84.8 eV covers 10–69 eV
    energies = fine.offset + np.arange(fine.size) * fine.scale
    model_e = band_axis().offset + np.arange(60) * band_axis().scale
    truth = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    async with inst.scan("fine", "eels", truth.shape, fine) as scan:
        for row, classes in enumerate(truth):
            # the band spectra evaluated on the fine axis (nearest model channel)
            coarse = band_spectra(classes)
            idx = np.clip(np.round(energies - model_e[0]).astype(int), 0, 59)
            inside = (energies >= model_e[0] - 0.5) & (energies <= model_e[-1] + 0.5)
            await scan.send_line(row, np.where(inside, coarse[:, idx], 0.0).astype(np.float32))
    result = await sub.collect_scan("fine")
    assert result.summary.state == "complete"
    np.testing.assert_array_equal(result.maps["band"]["class"], truth)


async def test_out_of_range_scan_is_rejected_at_scan_start(clients):
    inst, sub, _ = clients
    narrow = Axis(size=100, offset=20.0, scale=0.1, units="eV")
    async with inst.scan("narrow", "eels", (2, 3), narrow, recognizers=["band"]) as scan:
        await scan.send_line(0, np.ones((3, 100), np.float32))
    events = []
    while True:
        msg = await sub.recv(10)
        if isinstance(msg.header, Event) and msg.header.scan_id == "narrow":
            events.append(msg.header)
            if len(events) == 3:
                break
        assert not isinstance(msg.header, ScanSummary), "a rejected scan has no summary"
    assert events[0].code == "scan_rejected"
    assert events[0].reason.startswith("recognizer 'band': ")  # 1.1: names the recognizer
    assert "20–29.9 eV" in events[0].reason and "10–69 eV" in events[0].reason
    assert [e.code for e in events[1:]] == ["unknown_scan", "unknown_scan"]  # its data and scan_end


async def test_an_uncalibrated_axis_goes_to_pca_and_a_named_recognizer_refuses_it(clients):
    """Protocol 1.1: ``units: ""`` is an uncalibrated axis (acquisition software before calibration). pca
    takes it; the band recognizer is left out, saying why; named, it refuses the scan."""
    inst, sub, _ = clients
    raw = Axis(size=60, offset=0.0, scale=1.0, units="")
    async with inst.scan("raw", "eels", (2, 3), raw) as scan:
        for r in range(2):
            await scan.send_line(r, np.random.default_rng(r).poisson(50, (3, 60)).astype(np.float32))
    result = await sub.collect_scan("raw", timeout=20)
    assert result.summary.state == "complete" and result.started.recognizers == ["pca"]
    assert result.started.axis.units == "" and "uncalibrated" in result.started.skipped["band"]
    async with inst.scan("raw-named", "eels", (2, 3), raw, recognizers=["band"]):
        pass
    while True:
        h = (await sub.recv(10)).header
        if isinstance(h, Event) and h.scan_id == "raw-named":
            break
    assert h.code == "scan_rejected" and h.reason.startswith("recognizer 'band': the scan's axis is uncalibrated")


def test_components_are_interpolated_independently():
    source = Axis(size=120, offset=9.0, scale=0.55, units="eV")
    m = AxisMap.build(source, MODEL)
    e_src = source.offset + np.arange(source.size) * source.scale
    e_model = MODEL.offset + np.arange(MODEL.size) * MODEL.scale
    x = np.stack([np.stack([2 * e_src, np.sin(e_src / 7)], axis=-1)] * 3)  # [3, 120, 2]
    out = m.apply(x.astype(np.float32))
    assert out.shape == (3, 60, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(2 * e_model, (3, 60)), rtol=1e-5)
    np.testing.assert_allclose(out[1, :, 1], np.interp(e_model, e_src, np.sin(e_src / 7)), atol=1e-5)
