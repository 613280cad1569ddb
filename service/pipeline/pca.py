"""Streaming PCA: an unsupervised analyzer that works on any spectral modality, trained model or not.

Per scan it accumulates the mean and covariance of the pixels as lines arrive and re-diagonalises
the covariance whenever the pixel count has grown by a quarter (at least 256 pixels), so early lines
are scored with an early basis and the basis settles as the scan goes on. Scores of each line are
published with the basis current at that moment; when the scan closes, every kept pixel is scored
again with the final basis, so the maps in the ``snapshot`` are consistent over the whole scan, and
the summary reports the explained-variance ratio of each component. Loadings and mean spectrum are
in the snapshot (``pca/loadings``, ``pca/mean``).

To keep the covariance small, spectra are first resampled onto at most ``max_channels`` channels
spanning the scan's own axis (several components per channel are flattened).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..protocol.messages import ArraySpec, Axis, RecognizerSummary, ScanStart
from .processor import Binding, WorkItem
from .spectral import SpectralBinding, SpectralProcessor
from .stats import latency_percentiles

log = logging.getLogger(__name__)


class StreamingPCA:
    """Running mean/covariance of ``d``-dimensional pixels and their top ``k`` principal axes."""

    def __init__(self, d: int, k: int, *, keep_values: int):
        self.d, self.k = d, k
        self.n = 0
        self._sum = np.zeros(d)
        self._outer = np.zeros((d, d))
        self._since = 0
        self._shift: np.ndarray | None = None
        self.mean = np.zeros(d, np.float32)
        self.components = np.zeros((k, d), np.float32)
        self.explained_ratio = np.zeros(k)
        self._keep_values = keep_values
        self.kept: list[tuple[int, int, np.ndarray]] = []  # (row, col0, pixels [n, d])
        self._kept_values = 0
        self.kept_all = True

    def update(self, x: np.ndarray, row: int, col0: int) -> None:
        if self._shift is None:
            self._shift = x.mean(axis=0)  # accumulate around a reference: float32 products stay accurate
        xc = x - self._shift
        self._sum += xc.sum(axis=0, dtype=np.float64)
        self._outer += xc.T @ xc  # float32 BLAS per line, float64 running sum
        self.n += len(x)
        self._since += len(x)
        if self.kept_all:
            if self._kept_values + x.size <= self._keep_values:
                self.kept.append((row, col0, x))
                self._kept_values += x.size
            else:
                self.kept_all = False
                log.warning("PCA keeps at most %d values per scan; final maps keep running scores", self._keep_values)
        if self._since >= max(256, self.n // 4) or not self.explained_ratio.any():
            self.refresh()

    def refresh(self) -> None:
        if self.n < 2:
            return
        mean_c = self._sum / self.n
        cov = self._outer / self.n - np.outer(mean_c, mean_c)
        mean = mean_c + self._shift
        values, vectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(values)[::-1][: self.k]
        comps = vectors[:, order].T  # [k, d]
        # a fixed sign convention, so maps do not flip between refreshes: largest |loading| positive
        signs = np.sign(comps[np.arange(len(order)), np.abs(comps).argmax(axis=1)])
        comps *= np.where(signs == 0, 1.0, signs)[:, None]
        total = max(float(np.trace(cov)), 1e-30)
        self.mean = mean.astype(np.float32)
        self.components[: len(order)] = comps
        self.explained_ratio[: len(order)] = np.clip(values[order], 0.0, None) / total
        self._since = 0

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.components.T).astype(np.float32)


class PCAAnalyzer(SpectralProcessor):
    """The built-in ``pca`` analyzer: score maps of the first ``k`` principal components."""

    max_parallel = 1  # per-scan state is updated in order by one thread

    def __init__(self, *, k: int = 4, max_channels: int = 128, keep_values: int = 8 * 1024 * 1024,
                 name: str = "pca"):
        self.name = name
        self.k = k
        self.max_channels = max_channels
        self.keep_values = keep_values
        self._specs = [ArraySpec(name="scores", dtype="float32", shape=[k], labels=[f"pc{i + 1}" for i in range(k)])]

    def input_axis(self, start: ScanStart) -> Axis:
        a = start.axis
        if a.size <= self.max_channels:
            return a
        size = self.max_channels
        return Axis(size=size, offset=a.offset, scale=(a.end - a.offset) / (size - 1), units=a.units)

    def needed_components(self, start: ScanStart) -> list[str] | None:
        return start.components  # whatever the scan sends, as sent

    def new_state(self, start: ScanStart) -> StreamingPCA:
        d = self.input_axis(start).size * (len(start.components) if start.components else 1)
        return StreamingPCA(d, self.k, keep_values=self.keep_values)

    def state_bytes(self, binding: SpectralBinding) -> int:
        state: StreamingPCA = binding.state
        rows, cols = binding.filled.shape
        kept = min(self.keep_values, rows * cols * state.d) * 4  # float32 pixels kept for the final maps
        return kept + state.d * state.d * 8 * 2  # covariance sums and their eigendecomposition

    def pixel_specs(self) -> list[ArraySpec]:
        return list(self._specs)

    def process(self, items: list[WorkItem]) -> list[dict[str, np.ndarray]]:
        results = []
        for item in items:
            state: StreamingPCA = item.binding.state
            x = item.binding.prepare(item.values).reshape(item.n_pixels, -1)
            state.update(x, item.row, item.col0)
            results.append({"scores": state.project(x)})
        return results

    def finish(self, binding: Binding) -> None:
        assert isinstance(binding, SpectralBinding)
        state: StreamingPCA = binding.state
        state.refresh()
        if state.kept_all:
            scores = binding.maps["scores"]
            for row, col0, x in state.kept:
                scores[row, col0: col0 + len(x)] = state.project(x)
        state.kept = []

    def summarize(self, binding: Binding) -> RecognizerSummary:
        assert isinstance(binding, SpectralBinding)
        state: StreamingPCA = binding.state
        return RecognizerSummary(pixels_recognized=binding.pixels_done,
                                 explained_variance_ratio=[float(v) for v in state.explained_ratio],
                                 **latency_percentiles(binding.latencies_ms))

    def extras(self, binding: SpectralBinding) -> list[tuple[ArraySpec, np.ndarray]]:
        state: StreamingPCA = binding.state
        return [(ArraySpec(name="loadings", dtype="float32", shape=[self.k, state.d],
                           labels=None), state.components),
                (ArraySpec(name="mean", dtype="float32", shape=[state.d]), state.mean)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "analyzer", "modality": "any",
                "description": f"streaming PCA: scores of the first {self.k} principal components of the scan's "
                               f"own spectra (resampled to at most {self.max_channels} channels); final maps and "
                               "loadings in the snapshot, explained variance in the summary",
                "outputs": [s.model_dump(mode="json") for s in self._specs]}
