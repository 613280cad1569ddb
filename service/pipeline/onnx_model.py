"""One ONNX model: an ONNX Runtime session and the model card that says how to read its outputs.

Sessions are created once, with explicit providers, fixed thread counts and spinning off; the card
(``scanlens.protocol.model_card``) is checked against the graph when the model is opened. Spectral
and frame recognizers (``spectral.py``, ``frames.py``) each hold one ``OnnxModel``; ``run`` and
``run_bound`` are called from inference worker threads only (ONNX Runtime releases the GIL while it
computes). The execution providers come from the ``providers`` setting (``providers.py``: names, the
fallback rule); the model records the ones that took its session and the fallback warnings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..protocol.model_card import ModelCard, OutputSpec, card_from_metadata
from . import providers as eps
from .providers import ModelError  # defined there, below this module, so that ProviderError can be one


def session_options(threads: int, *, image: bool = False) -> ort.SessionOptions:
    """ONNX Runtime options of every scanlens session: ``threads`` intra-op threads, no spinning.

    ``image``: a frame model's session, without ONNX Runtime's memory pattern (which plans one block for
    all of a run's tensors per input shape): two runs on 576² tiles of stem-unet peak at 377 instead of
    472 MB, at the same speed (docs/performance.md, "Benchmark: frames")."""
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = not image
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def read_card(session: ort.InferenceSession, source: Path) -> ModelCard:
    """The model card in a session's metadata; ModelError naming ``source`` when it is absent or invalid."""
    try:
        return card_from_metadata(session.get_modelmeta().custom_metadata_map)
    except KeyError as exc:
        raise ModelError(f"{source}: {exc.args[0]}") from None
    except ValueError as exc:
        raise ModelError(f"{source}: invalid model card: {exc}") from None


class OnnxModel:
    """A session plus its card, checked against each other: one input named as in the card, every
    output the card names present in the graph."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, source: Path, threads: int,
                 warnings: Sequence[str] = ()):
        self.session = session
        self.card = card
        self.path = Path(source)
        self.threads = threads  # intra-op threads of one run
        #: the providers that took the session (short names, the one that runs it first)
        self.providers = [eps.display(p) for p in session.get_providers()]
        #: why it runs on another provider than the first one asked for (empty: it does not)
        self.warnings = list(warnings)
        self.output_device = eps.output_device(self.providers[0])  # where ``run_bound`` binds the outputs
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != card.input.name:
            raise ModelError(f"{self.path}: graph inputs {[i.name for i in inputs]} do not match the card")
        graph_outputs = {o.name for o in session.get_outputs()}
        missing = [o.name for o in card.outputs if o.name not in graph_outputs]
        if missing:
            raise ModelError(f"{self.path}: card names outputs {missing} the graph does not have")

    @classmethod
    def open(cls, path: Path | str, *, threads: int | Mapping[str, int] = 2,
             providers: Sequence[str] = ("CPU",)) -> OnnxModel:
        """A session for ``path`` and its card; ModelError when either is unusable.

        ``providers``: the execution providers in order of preference (``providers.py``); those this
        onnxruntime build lacks are left out with a warning, none left is a ProviderError. ``threads``:
        intra-op threads, or a table of them by provider (``providers.per_provider``), for the provider
        that takes the session: when another one than expected takes it, the session is made again with
        that one's thread count."""
        path = Path(path)
        asked, warnings = eps.resolve(providers)
        n = eps.per_provider(threads, eps.display(asked[0]), eps.DEFAULT_THREADS)
        session = cls._session(path, n, asked)
        warnings += eps.check_session(asked, session.get_providers())
        took = eps.display(session.get_providers()[0])
        card = read_card(session, path)
        image = card.input.pixel_size is not None  # known once the card is read: then a session of its own
        if (m := eps.per_provider(threads, took, eps.DEFAULT_THREADS)) != n or image:
            n, session = m, cls._session(path, m, [p for p in asked if p in session.get_providers()], image=image)
        return cls(session, card, path, n, warnings)

    @staticmethod
    def _session(path: Path, threads: int, providers: list[str], *, image: bool = False) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), sess_options=session_options(threads, image=image),
                                        providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: cannot load ONNX model: {exc}") from None

    @classmethod
    def from_session(cls, session: ort.InferenceSession, *, source: Path | str = "<session>",
                     threads: int = 2) -> OnnxModel:
        """Wrap a session that is already open (its card read from the session's metadata)."""
        return cls(session, read_card(session, Path(source)), Path(source), threads)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def modality(self) -> str:
        return self.card.modality

    @property
    def input_name(self) -> str:
        return self.card.input.name

    def outputs(self, role: str) -> list[OutputSpec]:
        """The card's outputs of one role, in card order."""
        return [o for o in self.card.outputs if o.role == role]

    def run(self, output_names: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
        """The named outputs for one input batch (worker threads only)."""
        return self.session.run(list(output_names), {self.card.input.name: batch})

    def run_bound(self, output_names: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
        """``run`` through an I/O binding (frame recognizers): the numpy input bound where it is, the
        outputs bound on the session's device (``output_device``: ``cuda`` under CUDA or TensorRT) and
        copied to CPU once, after the run, instead of per output inside it. On CPU the outputs are
        bitwise those of ``run``. One binding per call: calls may run in parallel (worker threads only)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.card.input.name, np.ascontiguousarray(batch))
        for name in output_names:
            binding.bind_output(name, self.output_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def describe(self) -> dict[str, Any]:
        """What the ``models`` control request reports: the card, verbatim."""
        return self.card.model_dump(mode="json")
