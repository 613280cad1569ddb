"""Figures of recognized maps next to the simulator's ground truth (matplotlib, headless).

A figure is a grid of panels; each panel is a class map (with a legend), a continuous map (with a
colour bar), an RGB composite, a line plot or a bar chart, optionally zoomed into a window. The demo builds the panel list for each modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # no display on instrument PCs' service accounts or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# red, green, blue first: the same order as the RGB abundance composites
PHASE_COLORS = ["#c44e52", "#55a868", "#4c72b0", "#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"]


@dataclass
class Panel:
    title: str
    data: np.ndarray
    kind: Literal["classes", "map", "rgb", "lines", "bars"] = "map"
    labels: list[str] | None = None  # class names (classes) or line / bar-series names (lines, bars)
    colors: list[str] | None = None  # classes: one colour per class (default PHASE_COLORS)
    cmap: str = "viridis"
    vmin: float | None = None
    vmax: float | None = None
    marks: np.ndarray | None = None  # bool [rows, cols]: pixels to circle (e.g. misclassified)
    marks_label: str = ""
    contour: np.ndarray | None = None  # bool [rows, cols]: outline this region (e.g. the true unknown phase)
    points: np.ndarray | None = None  # [n, 2] x, y: small markers (e.g. found atoms)
    points2: np.ndarray | None = None  # [m, 2] x, y: large markers (e.g. found defects)
    paths: list[np.ndarray] | None = None  # each [k, 2] x, y: polylines (e.g. trajectories)
    x: np.ndarray | None = None  # lines: x values
    xlabel: str = ""
    window: tuple[float, float, float, float] | None = None  # maps: (x0, x1, y0, y1) to zoom into
    xticks: list[str] | None = None  # bars: group names
    errors: np.ndarray | None = None  # bars: error bars, same shape as data


def _draw(fig, ax, p: Panel) -> None:
    if p.kind == "lines":
        for i, y in enumerate(np.atleast_2d(p.data)):
            ax.plot(p.x if p.x is not None else np.arange(len(y)), y, lw=1.2,
                    label=p.labels[i] if p.labels else None)
        if p.labels:
            ax.legend(fontsize=7)
        ax.set_xlabel(p.xlabel)
        ax.set_title(p.title)
        return
    if p.kind == "bars":
        data = np.atleast_2d(p.data)
        width = 0.8 / len(data)
        for i, y in enumerate(data):
            x = np.arange(data.shape[1]) + (i - (len(data) - 1) / 2) * width
            err = None if p.errors is None else np.atleast_2d(p.errors)[i]
            ax.bar(x, y, width, yerr=err, capsize=3, label=p.labels[i] if p.labels else None)
        ax.set_xticks(np.arange(data.shape[1]), p.xticks or [], fontsize=7)
        if p.labels:
            ax.legend(fontsize=7)
        ax.set_title(p.title)
        return
    if p.kind == "classes":
        n = len(p.labels or [])
        colors = (p.colors or PHASE_COLORS)[:n]
        ax.imshow(p.data, cmap=ListedColormap(colors), vmin=-0.5, vmax=n - 0.5,
                  interpolation="nearest", origin="lower")
        ax.legend(handles=[Patch(color=colors[i], label=label) for i, label in enumerate(p.labels or [])],
                  loc="lower right", fontsize=7, framealpha=0.8)
    elif p.kind == "rgb":
        ax.imshow(np.clip(p.data[..., :3], 0.0, 1.0), interpolation="nearest", origin="lower")
    else:
        im = ax.imshow(p.data, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation="nearest", origin="lower")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if p.points is not None and len(p.points):
        ax.scatter(p.points[:, 0], p.points[:, 1], s=2, c="#ffcc00", linewidths=0)
    if p.points2 is not None and len(p.points2):
        ax.scatter(p.points2[:, 0], p.points2[:, 1], s=60, facecolors="none", edgecolors="red", linewidths=1.2)
    for path in p.paths or []:
        ax.plot(path[:, 0], path[:, 1], lw=1.0)
    if p.contour is not None and p.contour.any() and not p.contour.all():
        ax.contour(p.contour.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
    if p.marks is not None and p.marks.any():
        ys, xs = np.nonzero(p.marks)
        ax.scatter(xs, ys, s=6, facecolors="none", edgecolors="cyan", linewidths=0.6,
                   label=f"{p.marks_label} ({int(p.marks.sum())})")
        ax.legend(loc="upper right", fontsize=7)
    if p.window is not None:
        ax.set_xlim(p.window[0], p.window[1])
        ax.set_ylim(p.window[2], p.window[3])
    ax.set_title(p.title)
    ax.set_xlabel("column")
    ax.set_ylabel("row")


def render_panels(path: Path, panels: list[Panel], *, ncols: int = 3, title: str = "") -> Path:
    """Draw ``panels`` row by row into a PNG at ``path``."""
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 4.1 * nrows), constrained_layout=True,
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw(fig, ax, panel)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
