"""The demo's figure helpers: maps with row 0 at the top, scale bars and colour bars in physical units."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.legend import Legend
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from scanlens.models.demo.figures import Panel, draw_panels, render_panels, scale_bar, unit_label


@pytest.mark.parametrize(("fov", "units", "expected"), [
    (51.2, "nm", (10.0, "10 nm")),  # the EELS scan: 128 px of 0.4 nm
    (12.8, "um", (2.0, "2 µm")),  # the BE-PFM scan: 128 px of 0.1 µm
    (6.4, "µm", (1.0, "1 µm")),  # the loops scan: 64 px of 0.1 µm
    (20.48, "nm", (5.0, "5 nm")),  # a STEM frame: 1024 px of 0.02 nm
    (3.8, "nm", (1.0, "1 nm")),  # its zoom
    (0.5, "um", (0.1, "100 nm")),  # a bar under the map's unit is written in the next smaller one
    (64.0, "Å", (10.0, "1 nm")),
    (12.0, "Å", (2.0, "2 Å")),
    (2.0, "nm", (0.5, "5 Å")),
    (3.0, "mm", (0.5, "500 µm")),
])
def test_scale_bar_is_round_and_about_a_fifth_of_the_field(fov, units, expected):
    length, label = scale_bar(fov, units)
    assert (length, label) == expected
    assert 0.1 < length / fov < 0.35


def test_scale_bar_refuses_what_is_not_a_length():
    with pytest.raises(ValueError, match="not a length"):
        scale_bar(10.0, "eV")
    with pytest.raises(ValueError):
        scale_bar(0.0, "nm")
    assert unit_label("um") == "µm" and unit_label("A") == "Å" and unit_label("nm") == "nm"


def test_map_panel_has_origin_upper_a_scale_bar_and_a_colour_bar_with_units(tmp_path):
    data = np.arange(128 * 96, dtype=float).reshape(128, 96)
    marks = np.zeros(data.shape, bool)
    marks[3, 4] = True
    panels = [Panel("confidence", data / data.max(), vmin=0, vmax=1, pixel=(0.4, "nm"),
                    cbar_label="confidence (0–1)"),
              Panel("classes", (data // 4000).astype(int), kind="classes", labels=["a", "b", "c", "d"],
                    marks=marks, marks_label="misclassified", pixel=(0.1, "um"), window=(10, 60, 20, 70)),
              Panel("no calibration", data),
              Panel("transitions", np.array([[0.9, 0.1], [0.2, 0.8]]), kind="matrix",
                    reference=np.array([[0.95, 0.05], [0.25, 0.75]]), xticks=["x", "y"], vmin=0, vmax=1,
                    cbar_label="probability (0–1)")]
    fig = draw_panels(panels, ncols=2, title="test")
    try:
        maps = [ax for ax in fig.axes if ax.images and ax.get_title()]
        assert [ax.get_title() for ax in maps] == ["confidence", "classes", "no calibration", "transitions"]
        assert all(ax.images[0].origin == "upper" for ax in maps)
        # row 0 at the top: the y axis runs downwards
        for ax in maps[:3]:
            bottom, top = ax.get_ylim()
            assert bottom > top
        assert maps[1].get_ylim() == (70, 20) and maps[1].get_xlim() == (10, 60)

        def bar_label(ax):
            bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
            return bars[0].txt_label.get_text() if bars else None

        assert bar_label(maps[0]) == "10 nm" and not maps[0].get_xticks().size and not maps[0].get_yticks().size
        assert bar_label(maps[1]) == "1 µm"  # the 50 px window of 0.1 µm pixels
        assert bar_label(maps[2]) is None and maps[2].get_xlabel() == "column"
        # the class legend is kept next to the marks' legend
        legends = [a for a in maps[1].artists if isinstance(a, Legend)] + [maps[1].get_legend()]
        assert len(legends) == 2
        cbar_labels = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]
        assert "confidence (0–1)" in cbar_labels and "probability (0–1)" in cbar_labels
        texts = [t.get_text() for t in maps[3].texts]
        assert "0.900\n(0.950)" in texts
    finally:
        plt.close(fig)
    png = render_panels(tmp_path / "fig.png", panels, ncols=2, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
