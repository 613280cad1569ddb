"""Streaming PCA: the math against a batch SVD, and live through the service on data with no model."""

from __future__ import annotations

import numpy as np

from scanlens.pipeline import StreamingPCA
from scanlens.protocol.messages import Axis, ScanStart
from scanlens.testing import data_frames, wait_for_event


def latent_scan(rows: int, cols: int, d: int, seed: int = 0):
    """Pixels = mean + 2 latent maps x 2 basis spectra + small noise."""
    rng = np.random.default_rng(seed)
    e = np.linspace(0, 1, d)
    basis = np.stack([np.exp(-((e - 0.3) / 0.05) ** 2), np.exp(-((e - 0.7) / 0.08) ** 2)])
    yy, xx = np.mgrid[0:rows, 0:cols]
    latent = np.stack([np.sin(xx / 5.0) * 3, (yy / rows) * 2 - 1], axis=-1)  # [rows, cols, 2]
    x = 10 + latent @ basis + 0.01 * rng.standard_normal((rows, cols, d))
    return x.astype(np.float32), latent


def test_streaming_pca_matches_batch_svd():
    x, _ = latent_scan(24, 30, 50)
    pca = StreamingPCA(50, 3, keep_values=10**9)
    for row in range(24):
        pca.update(x[row], row, 0)
    pca.refresh()
    flat = x.reshape(-1, 50).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = sv**2 / np.sum(sv**2)
    np.testing.assert_allclose(pca.explained_ratio, ratio[:3], atol=1e-5)
    for k in range(2):  # the two real components agree up to sign
        assert abs(float(pca.components[k] @ vt[k])) > 0.9999
    assert ratio[:2].sum() > 0.999


async def test_pca_runs_live_on_a_modality_without_a_model(clients):
    inst, sub, ctl = clients
    rows, cols, d = 20, 16, 80
    x, latent = latent_scan(rows, cols, d, seed=3)
    axis = Axis(size=d, offset=0.0, scale=1.0, units="index")
    async with inst.scan("unsup", "afm-custom", (rows, cols), axis) as scan:
        for row in range(rows):
            await scan.send_line(row, x[row])
    result = await sub.collect_scan("unsup")
    assert result.started.recognizers == ["pca"]
    s = result.summary
    assert s.state == "complete" and s.pixels_recognized == rows * cols
    ratio = s.recognizers["pca"].explained_variance_ratio
    assert len(ratio) == 4 and sum(ratio[:2]) > 0.99 and ratio[0] >= ratio[1] >= ratio[2]
    assert result.maps["pca"]["scores"].shape == (rows, cols, 4)
    snap = await ctl.snapshot("unsup")
    scores = snap.arrays["pca/scores"]
    assert snap.arrays["pca/loadings"].shape == (4, d) and snap.arrays["pca/mean"].shape == (d,)
    # the final score maps span the latent maps: each latent map is a linear function of pc1, pc2
    design = np.column_stack([scores[..., 0].ravel(), scores[..., 1].ravel(), np.ones(rows * cols)])
    for k in range(2):
        coef, *_ = np.linalg.lstsq(design, latent[..., k].ravel(), rcond=None)
        resid = latent[..., k].ravel() - design @ coef
        assert 1 - resid.var() / latent[..., k].var() > 0.999


async def test_multi_component_scan(clients):
    inst, sub, _ = clients
    rows, cols, d = 6, 5, 30
    amp, _ = latent_scan(rows, cols, d, seed=1)
    data = np.stack([amp, -amp / 10], axis=-1)  # [rows, cols, d, 2]
    axis = Axis(size=d, offset=300.0, scale=1.0, units="kHz")
    async with inst.scan("comp", "bepfm-like", (rows, cols), axis, components=["amplitude", "phase"]) as scan:
        for row in range(rows):
            await scan.send_line(row, data[row])
        await inst.sock.send_multipart(data_frames("comp", rows, 0, amp[0]))  # 2-D data for a 2-component scan
        scan.seq += 1
    result = await sub.collect_scan("comp")
    s = result.summary
    assert s.pixels_recognized == rows * cols and [r.seq for r in s.rejected] == [rows]
    assert "2 components ['amplitude', 'phase']" in s.rejected[0].reason
    assert result.started.recognizers == ["pca"] and result.filled["pca"].all()
    assert s.recognizers["pca"].explained_variance_ratio[0] > 0.5


async def test_recognizer_and_scan_components_must_agree(clients):
    inst, sub, _ = clients
    axis = Axis(size=60, offset=10.0, scale=1.0, units="eV")
    await inst.send(ScanStart(scan_id="needs-none", modality="eels", shape=(2, 2), axis=axis,
                              components=["a", "b"], recognizers=["band"]))
    ev = await wait_for_event(sub, "scan_rejected")
    assert ev.scan_id == "needs-none" and "expects components none" in ev.reason


def test_component_order_reorders_by_name_and_refuses_missing():
    from scanlens.pipeline import AxisError
    from scanlens.pipeline.spectral import component_order

    assert component_order(None, None, "m") is None
    assert component_order(["up", "down"], ["up", "down"], "m") is None
    assert list(component_order(["phase", "amplitude", "x"], ["amplitude", "phase"], "m")) == [1, 0]
    for scan, needed, fragment in ((["up"], ["up", "down"], "missing ['down']"), (None, ["a"], "sends none"),
                                   (["a"], None, "expects components none")):
        try:
            component_order(scan, needed, "m")
        except AxisError as exc:
            assert fragment in str(exc)
        else:
            raise AssertionError("accepted")
