"""eels-fit, the physics fit, says when a spectrum is unlike its simulated training spectra (issue 11).

Through the real service (real sockets on loopback, the committed ONNX file): the card's held-out scan of
the EELS simulator has at most 2 % of its pixels flagged novel, no ``mostly_foreign`` event and the
summary's ``novel_fraction`` equal to the map's mean; flat Poisson noise (at training doses and at 0.3-3
counts per channel), another instrument's spectra
(sent on their own axis, ``OTHER_EELS_AXIS``, which the service maps onto the model's) and the phase
outside the reference set (LaAlO3) each have at least 95 % flagged and the event, once. The foreign data
are drawn here with other seeds than the card's figures (``scanlens.models.eels.foreign_data``).
"""

from __future__ import annotations

import numpy as np
import pytest

from scanlens.model_files import MODEL_DIR
from scanlens.sim.eels import DEFAULT_AXIS as EELS_SIM_AXIS
from scanlens.sim.eels import EELSConfig, EELSSample, simulate_spectra
from scanlens.sim.foreign import OTHER_EELS_AXIS, eels_other_instrument, flat_noise
from scanlens.testing import connected, loopback_settings, serving

from .model_checks import foreign_events, recognize_scan

MODEL = "eels-fit"
HELDOUT_SEED = 999  # eels-fit's card: training.heldout_seed



@pytest.mark.timeout(180)
async def test_eels_fit_flags_foreign_spectra_and_not_its_own():
    settings = loopback_settings(MODEL_DIR, models=[MODEL])
    held = EELSSample(EELSConfig(seed=HELDOUT_SEED))  # the card's held-out scan: not fitted on
    own = np.stack([held.line(r) for r in range(held.cfg.rows)])
    rng = np.random.default_rng(78)
    n = 16 * 32
    d0 = EELSConfig().dose
    lao = simulate_spectra(np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)), EELS_SIM_AXIS,
                           dose=d0 * np.exp(rng.uniform(np.log(0.3), np.log(3.0), n)),
                           read_noise=EELSConfig().read_noise, rng=rng)  # LaAlO3: not in the reference set
    foreign = {"flat noise": (flat_noise(n, EELS_SIM_AXIS.size, rng), EELS_SIM_AXIS),
               # 0.3-3 counts per channel: below every training dose (the counts floor, models/novelty.py)
               "faint flat noise": (flat_noise(n, EELS_SIM_AXIS.size, rng, counts_per_channel=1.0), EELS_SIM_AXIS),
               "another instrument": (eels_other_instrument(n, rng), OTHER_EELS_AXIS),
               "unknown phase": (lao, EELS_SIM_AXIS)}
    async with serving(settings) as server, connected(server) as clients:
        result = await recognize_scan(clients, "own", "eels", own, EELS_SIM_AXIS, MODEL)
        maps = result.maps[MODEL]
        novel = maps["novel"]
        assert novel.shape == (held.cfg.rows, held.cfg.cols) and novel.dtype == np.uint8
        assert np.isfinite(maps["novelty"]).all()
        assert novel.mean() <= 0.02, novel.mean()
        assert result.summary.state == "complete"
        assert result.summary.recognizers[MODEL].novel_fraction == pytest.approx(novel.mean())
        assert not foreign_events(result.events)
        for kind, (spectra, axis) in foreign.items():
            result = await recognize_scan(clients, kind.replace(" ", "-"), "eels", spectra.reshape(16, 32, -1), axis, MODEL)
            flagged = result.maps[MODEL]["novel"].mean()
            assert flagged >= 0.95, (kind, flagged)
            assert result.summary.recognizers[MODEL].novel_fraction == pytest.approx(flagged)
            events = foreign_events(result.events)
            assert len(events) == 1, (kind, events)
            assert MODEL in events[0].reason
