"""Figures of recognized maps next to the simulator's ground truth (matplotlib, headless).

A figure is a grid of panels; each panel is a class map (with a legend), a continuous map (with a
colour bar), an RGB composite, a line plot, a bar chart or a matrix (a heat map with its values written
in), optionally zoomed into a window. The demo builds the panel list for each modality.

Maps are drawn as microscopists read them: row 0 (the first scan line) at the top, and, given the
length of a pixel, a scale bar in physical units instead of pixel axes (:func:`scale_bar` picks its
length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # no display on instrument PCs' service accounts or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402

# red, green, blue first: the same order as the RGB abundance composites
PHASE_COLORS = ["#c44e52", "#55a868", "#4c72b0", "#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"]

#: metres per unit of the length units a calibration may carry (``PixelSize.units``, as instruments spell them)
LENGTH_UNITS: dict[str, float] = {
    "m": 1.0, "mm": 1e-3, "um": 1e-6, "\u00b5m": 1e-6, "\u03bcm": 1e-6, "micron": 1e-6, "microns": 1e-6,
    "nm": 1e-9, "\u00c5": 1e-10, "\u212b": 1e-10, "A": 1e-10, "angstrom": 1e-10, "pm": 1e-12,
}
#: the units a scale bar's label is written in, smallest first
_LABEL_UNITS: tuple[tuple[str, float], ...] = (("pm", 1e-12), ("Å", 1e-10), ("nm", 1e-9), ("µm", 1e-6),
                                                ("mm", 1e-3), ("m", 1.0))


def length_factor(units: str) -> float:
    """Metres per ``units`` (nm, um / µm, Å, ...); ValueError for anything that is not a length."""
    factor = LENGTH_UNITS.get(units.strip()) or LENGTH_UNITS.get(units.strip().lower())
    if factor is None:
        raise ValueError(f"{units!r} is not a length unit (known: {', '.join(sorted(LENGTH_UNITS))})")
    return factor


def unit_label(units: str) -> str:
    """How a length unit is printed: ``um`` as ``µm``, ``A`` as ``Å``; others unchanged."""
    factor = LENGTH_UNITS.get(units.strip())
    for name, f in _LABEL_UNITS:
        if factor == f:
            return name
    return units


def scale_bar(field_of_view: float, units: str, fraction: float = 0.2) -> tuple[float, str]:
    """A round scale bar for a map ``field_of_view`` ``units`` wide: its length in ``units`` (1, 2 or 5
    times a power of ten, the one nearest ``fraction`` of the field of view) and its label, written in the
    unit that makes the number at least 1 (``scale_bar(51.2, "nm") == (10.0, "10 nm")``,
    ``scale_bar(0.5, "um") == (0.1, "100 nm")``, ``scale_bar(64, "Å") == (10.0, "1 nm")``)."""
    if not (math.isfinite(field_of_view) and field_of_view > 0):
        raise ValueError(f"field of view must be a positive number, got {field_of_view}")
    per_unit = length_factor(units)
    target = field_of_view * fraction * per_unit  # metres
    exp = math.floor(math.log10(target))
    candidates = [m * 10.0**e for e in (exp - 1, exp, exp + 1) for m in (1, 2, 5)]
    best = min(candidates, key=lambda c: abs(math.log(c / target)))
    name, f = next((n, f) for n, f in reversed(_LABEL_UNITS) if best >= f * (1 - 1e-9) or f == _LABEL_UNITS[0][1])
    return float(f"{best / per_unit:.12g}"), f"{float(f'{best / f:.6g}'):g} {name}"


@dataclass
class Panel:
    title: str
    data: np.ndarray
    kind: Literal["classes", "map", "rgb", "lines", "bars", "matrix"] = "map"
    labels: list[str] | None = None  # class names (classes) or line / bar-series names (lines, bars)
    colors: list[str] | None = None  # classes: one colour per class (default PHASE_COLORS)
    cmap: str = "viridis"
    vmin: float | None = None
    vmax: float | None = None
    marks: np.ndarray | None = None  # bool [rows, cols]: pixels to circle (e.g. misclassified)
    marks_label: str = ""
    contour: np.ndarray | None = None  # bool [rows, cols]: outline this region (e.g. the true unknown phase)
    contour_color: str = "cyan"
    points: np.ndarray | None = None  # [n, 2] x, y: small markers (e.g. found atoms)
    points2: np.ndarray | None = None  # [m, 2] x, y: large markers (e.g. found defects)
    paths: list[np.ndarray] | None = None  # each [k, 2] x, y: polylines (e.g. trajectories)
    x: np.ndarray | None = None  # lines: x values
    xlabel: str = ""
    window: tuple[float, float, float, float] | None = None  # maps: (x0, x1, y0, y1) to zoom into
    xticks: list[str] | None = None  # bars: group names; matrix: row and column names
    errors: np.ndarray | None = None  # bars: error bars, same shape as data
    pixel: tuple[float, str] | None = None  # maps: the length of one pixel (size, units): a scale bar, no pixel axes
    cbar_label: str = ""  # map, matrix: the colour bar's label, with the quantity's unit
    ylabel: str = ""  # lines, bars: the quantity and its unit
    reference: np.ndarray | None = None  # matrix: values written in brackets under each cell's (e.g. the truth)


def add_scale_bar(ax, width_px: float, pixel: tuple[float, str]) -> AnchoredSizeBar:
    """A scale bar in the lower left of a map ``width_px`` pixels wide (pixels ``pixel`` = (size, units)),
    with :func:`scale_bar`'s length and label; the pixel ticks go."""
    size, units = pixel
    length, label = scale_bar(width_px * size, units)
    bar = AnchoredSizeBar(ax.transData, length / size, label, loc="lower left", pad=0.3, borderpad=0.5, sep=3,
                          color="black", frameon=True, size_vertical=width_px / 90, fontproperties={"size": 8})
    bar.patch.set(facecolor="white", alpha=0.8, edgecolor="none")
    ax.add_artist(bar)
    ax.set_xticks([])
    ax.set_yticks([])
    return bar


def _draw(fig, ax, p: Panel) -> None:
    if p.kind == "lines":
        for i, y in enumerate(np.atleast_2d(p.data)):
            ax.plot(p.x if p.x is not None else np.arange(len(y)), y, lw=1.2,
                    label=p.labels[i] if p.labels else None)
        if p.labels:
            ax.legend(fontsize=7)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.set_title(p.title)
        return
    if p.kind == "matrix":
        im = ax.imshow(p.data, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation="nearest", origin="upper")
        cbar = fig.colorbar(im, ax=ax, shrink=0.8)
        cbar.set_label(p.cbar_label)
        for (r, c), v in np.ndenumerate(p.data):
            text = "–" if not np.isfinite(v) else f"{v:.3f}"
            if p.reference is not None:
                text += f"\n({p.reference[r, c]:.3f})"
            red, green, blue, _ = im.cmap(im.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        names = p.xticks or []
        ax.set_xticks(np.arange(len(names)), names, fontsize=7)
        ax.set_yticks(np.arange(len(names)), names, fontsize=7)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
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
        ax.set_ylabel(p.ylabel)
        ax.set_title(p.title)
        return
    if p.kind == "classes":
        n = len(p.labels or [])
        colors = (p.colors or PHASE_COLORS)[:n]
        ax.imshow(p.data, cmap=ListedColormap(colors), vmin=-0.5, vmax=n - 0.5,
                  interpolation="nearest", origin="upper")
        ax.legend(handles=[Patch(color=colors[i], label=label) for i, label in enumerate(p.labels or [])],
                  loc="lower right", fontsize=7, framealpha=0.8)
    elif p.kind == "rgb":
        ax.imshow(np.clip(p.data[..., :3], 0.0, 1.0), interpolation="nearest", origin="upper")
    else:
        im = ax.imshow(p.data, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation="nearest", origin="upper")
        fig.colorbar(im, ax=ax, shrink=0.8).set_label(p.cbar_label)
    if p.points is not None and len(p.points):
        ax.scatter(p.points[:, 0], p.points[:, 1], s=2, c="#ffcc00", linewidths=0)
    if p.points2 is not None and len(p.points2):
        ax.scatter(p.points2[:, 0], p.points2[:, 1], s=60, facecolors="none", edgecolors="red", linewidths=1.2)
    for path in p.paths or []:
        ax.plot(path[:, 0], path[:, 1], lw=1.0)
    if p.contour is not None and p.contour.any() and not p.contour.all():
        ax.contour(p.contour.astype(float), levels=[0.5], colors=p.contour_color, linewidths=1.0)
    if p.marks is not None and p.marks.any():
        if ax.get_legend() is not None:  # keep the class legend next to the marks'
            ax.add_artist(ax.get_legend())
        ys, xs = np.nonzero(p.marks)
        ax.scatter(xs, ys, s=6, facecolors="none", edgecolors="cyan", linewidths=0.6,
                   label=f"{p.marks_label} ({int(p.marks.sum())})")
        ax.legend(loc="upper right", fontsize=7)
    rows, cols = p.data.shape[:2]
    x0, x1, y0, y1 = p.window if p.window is not None else (-0.5, cols - 0.5, -0.5, rows - 0.5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # row 0 at the top, as the scan was written
    ax.set_title(p.title)
    if p.pixel is not None:
        add_scale_bar(ax, x1 - x0, p.pixel)
    else:
        ax.set_xlabel("column")
        ax.set_ylabel("row")


def draw_panels(panels: list[Panel], *, ncols: int = 3, title: str = ""):
    """A figure of ``panels``, row by row (the caller saves and closes it)."""
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 4.1 * nrows), constrained_layout=True,
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw(fig, ax, panel)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, wrap=True)
    return fig


def render_panels(path: Path, panels: list[Panel], *, ncols: int = 3, title: str = "") -> Path:
    """Draw ``panels`` row by row into a PNG at ``path``."""
    fig = draw_panels(panels, ncols=ncols, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
