"""The shipped recognizers say when they cannot vouch for an answer (issue 11).

Each recognizer with a novelty head gets, through the real service (real sockets on loopback, the
committed ONNX file), a held-out scan of its own simulator — at most 2 % of its pixels flagged novel —
and each kind of foreign data — at least 95 % flagged, with the ``mostly_foreign`` event and the
summary's ``novel_fraction``. The foreign data come from the simulators (``scanlens.sim.foreign`` and
phases outside the training set), drawn here with other seeds than the card's figures, and are sent
on their own axes as an instrument would send them: the service maps them like any scan.
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

EELS_HELDOUT_SEED = 999  # eels-mlp's card: training.heldout_seed



async def test_eels_mlp_flags_foreign_spectra_and_not_its_own():
    settings = loopback_settings(MODEL_DIR, models=["eels-mlp"])
    held = EELSSample(EELSConfig(seed=EELS_HELDOUT_SEED))  # the card's held-out scan: never trained on
    own = np.stack([held.line(r) for r in range(held.cfg.rows)])
    rng = np.random.default_rng(77)
    n = 16 * 32
    lao = simulate_spectra(np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)), EELS_SIM_AXIS, dose=EELSConfig().dose,
                           read_noise=EELSConfig().read_noise, rng=rng)  # LaAlO3: not a phase it was trained on
    foreign = {"flat noise": (flat_noise(n, EELS_SIM_AXIS.size, rng), EELS_SIM_AXIS),
               # 0.3-3 counts per channel: below every training dose (the counts floor, models/novelty.py)
               "faint flat noise": (flat_noise(n, EELS_SIM_AXIS.size, rng, counts_per_channel=1.0), EELS_SIM_AXIS),
               "another instrument": (eels_other_instrument(n, rng), OTHER_EELS_AXIS),
               "unknown phase": (lao, EELS_SIM_AXIS)}
    async with serving(settings) as server, connected(server) as clients:
        result = await recognize_scan(clients, "own", "eels", own, EELS_SIM_AXIS, "eels-mlp")
        novel = result.maps["eels-mlp"]["novel"]
        assert novel.shape == (held.cfg.rows, held.cfg.cols)
        assert novel.mean() <= 0.02, novel.mean()
        assert result.summary.recognizers["eels-mlp"].novel_fraction == pytest.approx(novel.mean())
        assert not foreign_events(result.events)
        for kind, (spectra, axis) in foreign.items():
            result = await recognize_scan(clients, kind.replace(" ", "-"), "eels", spectra.reshape(16, 32, -1), axis,
                                      "eels-mlp")
            flagged = result.maps["eels-mlp"]["novel"].mean()
            assert flagged >= 0.95, (kind, flagged)
            assert result.summary.recognizers["eels-mlp"].novel_fraction >= 0.95
            assert len(foreign_events(result.events)) == 1, kind
