"""Training, export and scoring of scanlens recognizers (``models/`` in the repository).

Importing this package is cheap and torch-free: it imports none of its modules, which load on first use
(``scanlens.models.stem_unet`` or ``from scanlens.models import stem_unet``). The training modules
(:mod:`.eels`, :mod:`.bepfm`, :mod:`.loops`, :mod:`.stem_unet`, :mod:`.one_frame`; :mod:`.training` is
their shared loop; :mod:`.live`, the live trainer process of docs/live-training.md) import torch and need
the ``train`` extra; :mod:`.physics_fit` builds the classical EELS fit with onnx alone; :mod:`.export`
(ONNX export with the card, parity check, sessions), :mod:`.sampling` (shared random draws),
:mod:`.subspace` (the numpy half of the novelty scores; :mod:`.novelty` holds the torch heads) and
:mod:`.cli` (``scanlens train``) do not import torch;
:mod:`.scoring` (scores against ground truth, classical baselines) and :mod:`.demo` (the live demo
application) are torch-free. The trained files themselves live with the service, in ``scanlens.model_files``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "bepfm", "cli", "demo", "eels", "export", "live", "loops", "novelty", "one_frame", "physics_fit", "sampling",
    "scoring", "stem_unet", "subspace", "training",
]


def __getattr__(name: str) -> ModuleType:
    """Load a submodule on first attribute access (``scanlens.models.scoring``)."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
