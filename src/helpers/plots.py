"""Figure helpers: one visual style for every stage (matplotlib, CJK-capable fonts)."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

# matplotlib caches its font list; a fresh cache folder lets it see fonts installed later
# (Noto CJK for Chinese prompts and texts).
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "helpers-mpl"))

import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

STATUS_COLORS = {
    "passed": "#2e7d32", "ok": "#2e7d32",
    "failed": "#c62828", "mismatch": "#ef6c00", "fallback": "#f9a825",
    "error": "#6a1b9a", "unsupported": "#c62828", "crashed": "#4e342e", "timeout": "#546e7a",
    "skipped": "#9e9e9e",
}
PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#c62828", "#6a1b9a", "#00838f", "#5d4037"]

_STYLE = {
    "figure.figsize": (7.5, 3.6),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "font.family": ["DejaVu Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "sans-serif"],
}
plt.rcParams.update(_STYLE)

# The language of this process's figure text (a stage sets it from REPORT_LANG); figures are
# drawn in English and translated through the message catalog when saved or embedded.
LANGUAGE = "en"
MISSING_ENV = "HELPERS_I18N_MISSING"  # a file to append figure texts without a catalog entry


def set_language(lang: str) -> None:
    global LANGUAGE
    LANGUAGE = lang


def text(shown: str) -> str:
    """A caption in this process's figure language (the catalog's translation, else as is)."""
    if LANGUAGE == "en" or not shown:
        return shown
    from helpers import i18n

    found = i18n.lookup(shown, LANGUAGE)
    return shown if found is None else found


def translate(fig: Any, lang: str | None = None) -> Any:
    """Every text of a figure (titles, axis labels, legend entries, annotations, colorbar
    labels) replaced by its catalog translation in `lang` (default: LANGUAGE) where the catalog
    has one; numbers and texts without an entry stay as drawn."""
    lang = lang or LANGUAGE
    if lang == "en":
        return fig
    from matplotlib.text import Text

    from helpers import i18n

    missing = []
    for text in fig.findobj(Text):
        shown = text.get_text()
        if not shown or not any(c.isalpha() for c in shown):
            continue
        found = i18n.lookup(shown, lang)
        if found is not None:
            text.set_text(found)
        elif not i18n.has_cjk(shown):  # already translated (a figure embedded twice)
            missing.append(shown)
    if missing and os.environ.get(MISSING_ENV):
        with open(os.environ[MISSING_ENV], "a", encoding="utf-8") as fh:
            fh.writelines(m.replace("\n", " ") + "\n" for m in missing)
    return fig


def drawn(fig: Any, dpi: float) -> Any:
    """The figure rendered at `dpi` as a PIL image, what savefig(bbox_inches="tight") writes:
    its tight box padded by savefig.pad_inches (past the canvas: the figure's face color).

    One draw, cropped, where savefig lays the figure out, draws it to find the box and draws
    it again; text reaching past the canvas (a title wider than the figure) takes a second
    draw into a canvas grown to hold it. The figure's dpi and layout are left as they were.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    before = fig.dpi
    fig.set_dpi(dpi)
    try:
        canvas.draw()
        pad = matplotlib.rcParams["savefig.pad_inches"]
        box = fig.get_tightbbox(canvas.get_renderer())  # inches
        width, height = fig.get_size_inches()
        if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
            return _grown(fig, box.padded(pad), dpi)
        rgba = np.asarray(canvas.buffer_rgba())  # [H, W, 4], row 0 at the top
    finally:
        fig.set_dpi(before)
    x0, x1 = round((box.x0 - pad) * dpi), round((box.x1 + pad) * dpi)
    y0 = rgba.shape[0] - round((box.y1 + pad) * dpi)
    y1 = rgba.shape[0] - round((box.y0 - pad) * dpi)
    face = tuple(round(255 * c) for c in to_rgba(fig.get_facecolor()))
    image = Image.new("RGBA", (x1 - x0, y1 - y0), face)
    inner = rgba[max(y0, 0):min(y1, rgba.shape[0]), max(x0, 0):min(x1, rgba.shape[1])]
    image.paste(Image.fromarray(np.ascontiguousarray(inner), "RGBA"), (max(-x0, 0), max(-y0, 0)))
    return image


def _grown(fig: Any, box: Any, dpi: float) -> Any:
    """savefig of the box (inches) found by a draw just made, without laying the figure out
    again."""
    from PIL import Image

    engine = fig.get_layout_engine()
    if engine is not None:
        fig.set_layout_engine("none")
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches=box)
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
    return Image.open(buf)


def save_png(fig: Any, path: str | Path | BinaryIO, dpi: float) -> None:
    """The figure as a PNG file (or into a binary stream), as savefig(path, dpi=dpi,
    bbox_inches="tight") writes it."""
    drawn(fig, dpi).save(path, format="png")


def figure(ncols: int = 1, nrows: int = 1, width: float = 7.5, height: float = 3.6,
           **kw: Any) -> tuple[Any, Any]:
    """A figure in the report's style: (fig, ax) or (fig, axes) for a grid."""
    return plt.subplots(nrows, ncols, figsize=(width, height), constrained_layout=True, **kw)


# inches around and between stacked() rows: room for tick labels and an axis label left, a
# colorbar with its label right, a title above the first row (and above any row titled)
STACK = {"left": 0.9, "right": 1.0, "top": 0.35, "bottom": 0.5, "gap": 0.12, "title": 0.3}


def stacked(nrows: int, width: float = 7.5, height: float = 3.6,
            titled: Sequence[int] = ()) -> tuple[Any, list[Any]]:
    """Rows of axes over one shared x axis (only the last labels it), at fixed margins
    (STACK) where figure() asks a layout engine, which costs a third of such a figure's
    draw; the saved and embedded PNGs are cropped to what is drawn (drawn()). titled: the rows
    after the first that carry a title. colorbar() adds a colorbar right of a row."""
    fig = plt.figure(figsize=(width, height))
    m = STACK
    gaps = [m["gap"] + (m["title"] if i in titled else 0.0) for i in range(1, nrows)]
    row = (height - m["top"] - m["bottom"] - sum(gaps)) / nrows
    top, axes = height - m["top"], []
    for i in range(nrows):
        top -= gaps[i - 1] if i else 0.0
        box = (m["left"] / width, (top - row) / height, (width - m["left"] - m["right"]) / width,
               row / height)
        axes.append(fig.add_axes(box, sharex=axes[0] if axes else None))
        top -= row
    for ax in axes[:-1]:  # the shared x axis is labelled once, under the last row
        ax.tick_params(labelbottom=False)
        ax.xaxis.label.set_visible(False)
    return fig, axes


def colorbar(img: Any, ax: Any, label: str) -> Any:
    """A colorbar for `img` right of a stacked() row, as tall as the row."""
    fig, box = ax.figure, ax.get_position()
    width = fig.get_figwidth()
    cax = fig.add_axes((box.x1 + 0.08 / width, box.y0, 0.13 / width, box.height))
    return fig.colorbar(img, cax=cax, label=label)


def bars(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str,
         log: bool = False, colors: Sequence[str] | None = None) -> tuple[Any, Any]:
    """Horizontal-label bar chart with the value printed above each bar."""
    fig, ax = figure(width=max(5.0, 0.7 * len(labels) + 2))
    ax.bar(range(len(labels)), values, color=colors or PALETTE[0])
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right"
                  if len(labels) > 4 else "center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    return fig, ax
