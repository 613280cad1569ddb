"""Checks the tests of the MLP recognizers (eels-mlp, bepfm-mlp, loops-mlp) share: the committed ONNX file,
a quick training run and ONNX Runtime against torch on the same inputs. Each test file adds its model's own."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from scanlens.models.export import make_session, read_card
from scanlens.protocol.model_card import CARD_KEY, ModelCard


# --------------------------------------------------------------------------- the committed model (no torch)


def check_committed_file(path: Path, max_bytes: int = 1_000_000) -> ort.InferenceSession:
    """One small ONNX file (under ``max_bytes``) with no external data; returns a session on it, configured as
    the service's."""
    assert path.is_file()
    assert path.stat().st_size < max_bytes
    proto = onnx.load(str(path))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    return make_session(path)


def committed_card(path: Path) -> ModelCard:
    """The card ``read_card`` finds, checked to be the JSON stored under ``CARD_KEY``."""
    card = read_card(path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert ModelCard.model_validate_json(props[CARD_KEY]) == card
    return card


# --------------------------------------------------------------------------- training (torch)


@dataclass
class QuickRun:
    """A quick training run: its result, the exported file, the progress events and the seconds it took."""

    result: Any
    path: Path
    events: list[Any]
    seconds: float


def quick_run(module: str, tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """``models.<module>.fit(quick=True, seed=0)`` and ``export`` to a temporary file (skipped without torch)."""
    pytest.importorskip("torch")
    training = importlib.import_module(f"scanlens.models.{module}")

    events: list[Any] = []
    path = tmp_path_factory.mktemp(module) / "quick.onnx"
    t0 = time.perf_counter()
    result = training.fit(quick=True, seed=0, progress=events.append)
    training.export(result, path, progress=events.append)
    return QuickRun(result=result, path=path, events=events, seconds=time.perf_counter() - t0)


def check_novelty_card(card: ModelCard, *, heldout_at_most: float = 0.02, foreign_at_least: float = 0.95) -> None:
    """The card has a novelty section computed by the training code: a threshold at its quantile of held-out
    training-like data (about 1 - quantile of it flagged), at most ``heldout_at_most`` of the held-out scan
    flagged, and at least ``foreign_at_least`` of each kind of foreign data."""
    nov = card.novelty
    assert nov is not None and [o.name for o in card.outputs if o.role == "novelty"] == [nov.output]
    cal = nov.calibration
    assert np.isfinite(nov.threshold) and nov.threshold > 0
    assert abs(cal["heldout_flagged"] - (1 - cal["quantile"])) < 0.01
    assert cal["heldout_scan_flagged"] <= heldout_at_most, cal
    foreign = {k: v for k, v in cal.items() if k.endswith("_flagged") and not k.startswith("heldout")}
    assert foreign and all(v >= foreign_at_least for v in foreign.values()), foreign


def check_progress_events(events: list[Any], epochs: int) -> None:
    """Data, train and export stages were reported, one ``train`` event per epoch with a finite loss."""
    stages = [e.stage for e in events]
    assert {"data", "train", "export"} <= set(stages)
    train = [e for e in events if e.stage == "train"]
    assert [e.step for e in train] == list(range(1, epochs + 1))
    assert all(e.loss is not None and np.isfinite(e.loss) for e in train)


def check_onnx_matches_torch(quick: QuickRun, inputs: np.ndarray, input_name: str, output_names: Sequence[str],
                             check_outputs: Callable[..., None]) -> None:
    """On batches of 1, 7 and all of ``inputs``, ONNX Runtime on the exported file gives torch's outputs (same
    shapes, within 1e-4 absolute or relative), and ``check_outputs(*outputs, batch_size)`` accepts them."""
    torch = pytest.importorskip("torch")
    session = make_session(quick.path)
    model = quick.result.model.eval()
    if quick.result.novelty is not None:  # exported with its novelty head: the network's outputs, then the score
        from scanlens.models.novelty import WithNovelty

        model = WithNovelty(model, quick.result.novelty.head).eval()
    for batch in (inputs[:1], inputs[:7], inputs):
        with torch.no_grad():
            out = model(torch.from_numpy(batch))
        ref = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        got = session.run(list(output_names), {input_name: batch})
        assert len(got) == len(ref)
        for r, g in zip(ref, got):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)  # relative: novelty scores of extreme inputs are large
        check_outputs(*got, len(batch))


# --------------------------------------------------------------------------- novelty through the service


async def recognize_scan(clients: Any, scan_id: str, modality: str, lines: np.ndarray, axis: Any, recognizer: str,
                         *, components: Sequence[str] | None = None, timeout: float = 60.0) -> Any:
    """Send ``lines`` ``[rows, cols, ...]`` as one spectral scan to ``recognizer`` through the clients of
    ``scanlens.testing.connected`` and collect it (``Subscriber.collect_scan``) until its summary."""
    inst, sub, _ = clients
    extra = {"components": list(components)} if components is not None else {}
    async with inst.scan(scan_id, modality, lines.shape[:2], axis, recognizers=[recognizer], **extra) as scan:
        for row, line in enumerate(lines):
            await scan.send_line(row, line)
    return await sub.collect_scan(scan_id, timeout=timeout)


def foreign_events(events: Sequence[Any]) -> list[Any]:
    """The ``mostly_foreign`` events among ``events`` (a scan result's ``events``, or any messages)."""
    from scanlens.protocol.messages import Event

    return [e for e in events if isinstance(e, Event) and e.code == "mostly_foreign"]
