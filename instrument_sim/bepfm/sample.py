"""A simulated field of cocci and rods (and optionally spores) on a substrate (:class:`BEPFMSample`):
ground-truth maps, BE scan lines."""

from __future__ import annotations

from os import PathLike

import numpy as np

from .config import BEPFMConfig
from .geometry import Cell, place_cells
from .oscillator import axis_frequencies, measure_sho, sho_response
from .parameters import ALL_CLASSES, CLASSES, pixel_scatter, sample_parameters, substrate_parameters, to_physical
from .truth import write_ground_truth


class BEPFMSample:
    """A simulated field of cocci and rods on a substrate: ground-truth maps and its BE scan lines on demand.

    ``label`` indexes ``classes``: :data:`CLASSES` (the shipped model's order), with :data:`SPORE_CLASS`
    appended as label 3 when ``cfg.spores_per_100um2 > 0`` (:data:`ALL_CLASSES`).
    """

    def __init__(self, cfg: BEPFMConfig = BEPFMConfig()) -> None:
        self.cfg = cfg
        self.classes: tuple[str, ...] = ALL_CLASSES if cfg.spores_per_100um2 > 0 else CLASSES
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
        self.freq_kHz = axis_frequencies(cfg.axis)
        self.cells: list[Cell] = place_cells(cfg, rng)

        rows, cols, px = cfg.rows, cfg.cols, cfg.pixel_size_um
        y_um = (np.arange(rows, dtype=np.float64) + 0.5) * px
        x_um = (np.arange(cols, dtype=np.float64) + 0.5) * px

        # Substrate: class mean + stiffness field + slowly varying scatter, all smooth over the scan.
        corr_px = cfg.bg_corr_um / px
        theta = substrate_parameters(rng, (rows, cols), corr_px)

        # Cells: own parameters, blended toward the local substrate at the rim.
        cell_theta = sample_parameters(rng, np.array([c.klass for c in self.cells], dtype=np.intp))
        coverage = np.zeros((rows, cols))
        cell_id = np.full((rows, cols), -1, dtype=np.int32)
        reach = cfg.edge_um * 4.0
        for i, cell in enumerate(self.cells):
            ext = cell.half_length_um + cell.radius_um + reach
            r0 = max(0, int((cell.y_um - ext) / px) - 1)
            r1 = min(rows, int((cell.y_um + ext) / px) + 2)
            c0 = max(0, int((cell.x_um - ext) / px) - 1)
            c1 = min(cols, int((cell.x_um + ext) / px) + 2)
            if r0 >= r1 or c0 >= c1:
                continue
            d = cell.signed_distance(x_um[None, c0:c1], y_um[r0:r1, None])
            w = 0.5 * (1.0 + np.tanh(d / cfg.edge_um))
            box = (slice(r0, r1), slice(c0, c1))
            take = w > coverage[box]
            coverage[box] = np.where(take, w, coverage[box])
            cell_id[box] = np.where(take & (w >= 0.5), i, cell_id[box])
            blended = w[..., None] * cell_theta[i] + (1.0 - w[..., None]) * theta[box]
            theta[box] = np.where(take[..., None], blended, theta[box])
        theta += pixel_scatter(rng, theta.shape)

        klass = np.array([0] + [c.klass for c in self.cells], dtype=np.uint8)
        self.cell_id: np.ndarray = cell_id  # int32 [rows, cols], -1 on background
        self.coverage: np.ndarray = coverage.astype(np.float32)  # largest cell coverage w per pixel
        self.label: np.ndarray = klass[cell_id + 1]
        self.params: dict[str, np.ndarray] = to_physical(theta)

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.cfg.rows:
            raise IndexError(f"row {row} outside 0..{self.cfg.rows - 1}")

    def _row_params(self, row: int) -> tuple[np.ndarray, ...]:
        p = self.params
        return p["amplitude"][row], p["f0_kHz"][row], p["Q"][row], p["phase_rad"][row]

    def expected_line(self, row: int) -> np.ndarray:
        """Noise-free complex response ``[cols, axis.size]`` (complex128) of scan row ``row``."""
        self._check_row(row)
        return sho_response(self.freq_kHz, *self._row_params(row))

    def line(self, row: int) -> np.ndarray:
        """Measured ``[cols, axis.size, 2]`` float32 (amplitude a.u., phase rad) of row ``row``;
        the same for the same (seed, row)."""
        self._check_row(row)
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(1, row)))
        return measure_sho(self.freq_kHz, *self._row_params(row), self.cfg.noise, rng)

    def save_ground_truth(self, path: str | PathLike[str]) -> None:
        """Write label, parameter maps, cell ids, coverage, class names, axis and config to an ``.npz`` file."""
        write_ground_truth(path, self.cfg, label=self.label, cell_id=self.cell_id, coverage=self.coverage,
                           params=self.params, class_names=self.classes)
