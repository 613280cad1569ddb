"""Simulated instruments: physics of the samples and the streaming clients that play them to scanlens.

Installed as ``scanlens.sim``. Four simulators, pure numpy, each with exact ground truth:

* :mod:`.eels`: EELS spectrum images of an STO / LSMO / BFO oxide heterostructure (optionally with a
  region of a fourth, unknown phase);
* :mod:`.bepfm`: band-excitation PFM scans of a mixture of cocci and rods on a substrate;
* :mod:`.loops`: ferroelectric switching loops from the random-bond random-field Ising model;
* :mod:`.stem`: atomic-resolution HAADF STEM movies of WS2 or graphene with diffusing, transforming defects.

Each has a frozen config (``to_json`` / ``from_json`` from :mod:`.config_io`), a sample or movie that
renders data on demand, a source that the streaming code plays (:mod:`.sources` defines the
protocol of line-by-line sources) and a ``load_ground_truth`` for the file its ``save_ground_truth``
writes (re-exported here as ``load_<simulator>_ground_truth``). :mod:`.stream` sends sources to a
running service (:func:`stream_scan` for spectral scans, :func:`stream_movie` for movies) and
:mod:`.cli` is ``scanlens sim``.

The names below are loaded on first use, so importing one simulator (or the CLI) does not import
the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bepfm import BEPFMConfig, BEPFMSample, BEPFMSource
    from .bepfm import load_ground_truth as load_bepfm_ground_truth
    from .eels import EELSConfig, EELSSample, EELSSource
    from .eels import load_ground_truth as load_eels_ground_truth
    from .loops import LoopsConfig, LoopsSample, LoopsSource
    from .loops import load_ground_truth as load_loops_ground_truth
    from .sources import ScanSource
    from .stem import STEMConfig, STEMMovie, STEMSource
    from .stem import load_ground_truth as load_stem_ground_truth
    from .stream import MonotonicClock, StreamReport, stream_movie, stream_scan

# public name -> (submodule, name there)
_EXPORTS: dict[str, tuple[str, str]] = {
    "EELSConfig": (".eels", "EELSConfig"),
    "EELSSample": (".eels", "EELSSample"),
    "EELSSource": (".eels", "EELSSource"),
    "load_eels_ground_truth": (".eels", "load_ground_truth"),
    "BEPFMConfig": (".bepfm", "BEPFMConfig"),
    "BEPFMSample": (".bepfm", "BEPFMSample"),
    "BEPFMSource": (".bepfm", "BEPFMSource"),
    "load_bepfm_ground_truth": (".bepfm", "load_ground_truth"),
    "LoopsConfig": (".loops", "LoopsConfig"),
    "LoopsSample": (".loops", "LoopsSample"),
    "LoopsSource": (".loops", "LoopsSource"),
    "load_loops_ground_truth": (".loops", "load_ground_truth"),
    "STEMConfig": (".stem", "STEMConfig"),
    "STEMMovie": (".stem", "STEMMovie"),
    "STEMSource": (".stem", "STEMSource"),
    "load_stem_ground_truth": (".stem", "load_ground_truth"),
    "ScanSource": (".sources", "ScanSource"),
    "MonotonicClock": (".stream", "MonotonicClock"),
    "StreamReport": (".stream", "StreamReport"),
    "stream_movie": (".stream", "stream_movie"),
    "stream_scan": (".stream", "stream_scan"),
}

__all__ = [
    # configs
    "EELSConfig",
    "BEPFMConfig",
    "LoopsConfig",
    "STEMConfig",
    # samples and movies
    "EELSSample",
    "BEPFMSample",
    "LoopsSample",
    "STEMMovie",
    # sources
    "ScanSource",
    "EELSSource",
    "BEPFMSource",
    "LoopsSource",
    "STEMSource",
    # ground truth
    "load_eels_ground_truth",
    "load_bepfm_ground_truth",
    "load_loops_ground_truth",
    "load_stem_ground_truth",
    # streaming
    "MonotonicClock",
    "StreamReport",
    "stream_movie",
    "stream_scan",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
