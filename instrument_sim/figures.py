"""Figures of recognized maps next to the simulator's ground truth (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on instrument PCs' service accounts or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# red, green, blue first: the same order as the RGB abundance composites
PHASE_COLORS = ["#c44e52", "#55a868", "#4c72b0", "#dd8452", "#8172b3"]


def _phase_panel(ax, phase: np.ndarray, labels: list[str], title: str) -> None:
    cmap = ListedColormap(PHASE_COLORS[: len(labels)])
    ax.imshow(phase, cmap=cmap, vmin=-0.5, vmax=len(labels) - 0.5, interpolation="nearest", origin="lower")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=PHASE_COLORS[i], label=l) for i, l in enumerate(labels)],
              loc="lower right", fontsize=7, framealpha=0.8)


def _rgb(abundance: np.ndarray) -> np.ndarray:
    return np.clip(abundance[..., :3], 0.0, 1.0)


def render_eels(path: Path, *, truth_phase: np.ndarray, truth_abundance: np.ndarray, phase: np.ndarray,
                confidence: np.ndarray, abundance: np.ndarray, labels: list[str], title: str) -> Path:
    """Six panels: phase truth / recognized / confidence; abundance truth / recognized / error."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.4), constrained_layout=True)
    _phase_panel(axes[0, 0], truth_phase, labels, "ground truth phase")
    _phase_panel(axes[0, 1], phase, labels, "recognized phase (live)")
    im = axes[0, 2].imshow(confidence, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", origin="lower")
    axes[0, 2].set_title("confidence")
    fig.colorbar(im, ax=axes[0, 2], shrink=0.8)
    axes[1, 0].imshow(_rgb(truth_abundance), interpolation="nearest", origin="lower")
    axes[1, 0].set_title("ground truth abundance (R,G,B = " + ", ".join(labels[:3]) + ")")
    axes[1, 1].imshow(_rgb(abundance), interpolation="nearest", origin="lower")
    axes[1, 1].set_title("recognized abundance")
    err = np.sqrt(np.mean((abundance - truth_abundance) ** 2, axis=-1))
    im = axes[1, 2].imshow(err, cmap="magma", vmin=0.0, vmax=max(0.1, float(err.max())), interpolation="nearest", origin="lower")
    wrong = phase != truth_phase
    if wrong.any():
        ys, xs = np.nonzero(wrong)
        axes[1, 2].scatter(xs, ys, s=6, facecolors="none", edgecolors="cyan", linewidths=0.6,
                           label=f"misclassified ({int(wrong.sum())})")
        axes[1, 2].legend(loc="lower right", fontsize=7)
    axes[1, 2].set_title("abundance error (rms per pixel)")
    fig.colorbar(im, ax=axes[1, 2], shrink=0.8)
    for ax in axes.flat:
        ax.set_xlabel("column")
        ax.set_ylabel("row (growth direction)")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
