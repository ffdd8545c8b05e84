"""Figures for the HTML reports: matplotlib `Figure`s (no pyplot) embedded as base64 PNG."""
from __future__ import annotations

import base64
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def png_data_uri(figure: Figure) -> str:
    # The Agg canvas is attached to this figure only, so no global pyplot/backend state changes.
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def new_axes(width: float = 7.0, height: float = 3.2, dpi: int = 110, grid: bool = True):
    """A figure with one plot area, top and right frame lines removed."""
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    if grid:
        axes.grid(axis="y", alpha=0.3)
    return figure, axes
