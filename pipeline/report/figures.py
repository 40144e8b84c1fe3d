"""The report's figures: matplotlib drawn off-screen, returned as base64 PNG `data:` URLs (the page fetches nothing)."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

from transforms.aggregates import HISTOGRAM_EDGES
from transforms.sketch import QuantileSketch

# Colour scales: magnitudes (|x|) on a sequential one; signed attributions on a diverging one centred at 0.
SEQUENTIAL, DIVERGING = "inferno", "RdBu_r"
HISTOGRAM_BINS = 40
QUANTILES = (0.01, 0.5, 0.99)  # named in a sketch histogram's caption and data-values


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    # Names from data and models reach titles and labels: `$` in one is text, not matplotlib's mathtext.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """A matplotlib figure as a base64 PNG `data:` URL (the figure is closed)."""
    plt = _matplotlib()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def bars(labels: Sequence[str], heights: Sequence[float], title: str, ylabel: str) -> str:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2), 3))
    ax.bar(range(len(labels)), heights, color="#3b6ea8")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return png(fig)


def log_axis(ax) -> None:
    """A log x axis whose ticks read as plain numbers (1e-05, 0.001): with mathtext off (names from data reach
    labels), matplotlib's default 10^k labels would show as raw TeX."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def sketch_histogram(sketch: QuantileSketch, title: str, xlabel: str, bins: int = HISTOGRAM_BINS) -> tuple[str, dict]:
    """(PNG, what was drawn) of a quantile sketch: bins between the smallest and largest values, on a log axis where
    they are positive and span more than two decades, else linear (QuantileSketch.histogram); every row in one bin."""
    plt = _matplotlib()
    edges, counts, axis = sketch.histogram(bins)
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.stairs(counts, edges, fill=True, color="#3b6ea8")
    if axis == "log":
        log_axis(ax)
    ax.set_xlabel(xlabel + (" (log axis)" if axis == "log" else ""))
    ax.set_ylabel("rows")
    ax.set_title(title)
    drawn = {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "axis": axis,
        "quantiles": {str(q): sketch.quantile(q) for q in QUANTILES} if sketch.count else {},
    }
    return png(fig), drawn


def quantile_text(drawn: dict) -> str:
    """"1%: 0.08, median: 0.083, 99%: 0.087" from a sketch histogram's values (empty where it has none)."""
    names = {"0.01": "1%", "0.5": "median", "0.99": "99%"}
    return ", ".join(f"{names.get(q, q)} {v:.4g}" for q, v in drawn["quantiles"].items())


def histogram(counts: Sequence[int], title: str, xlabel: str) -> str:
    """The job's log-spaced histogram, cut to the bins that hold rows (summaries written before the sketch)."""
    plt = _matplotlib()
    counts = np.asarray(counts)
    edges = np.asarray(HISTOGRAM_EDGES)
    fig, ax = plt.subplots(figsize=(6, 2.6))
    inner = counts[1:-1]
    used = np.flatnonzero(inner)
    if len(used):
        low, high = used[0], used[-1] + 1
        step = max(1, -(-(high - low) // 40))  # at most about 40 bars: the job's fine bins, merged for the eye
        high = low + -(-(high - low) // step) * step
        padded = np.concatenate([inner, np.zeros(max(0, high - len(inner)), inner.dtype)])
        merged = padded[low:high].reshape(-1, step).sum(axis=1)
        ax.stairs(merged, edges[low : high + 1 : step], fill=True, color="#3b6ea8")
        if edges[high] / edges[low] > 10:
            log_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    extra = []
    if counts[0]:
        extra.append(f"{counts[0]} below {edges[0]:g}")
    if counts[-1]:
        extra.append(f"{counts[-1]} above {edges[-1]:g}")
    ax.set_title(title + (f" ({'; '.join(extra)})" if extra else ""))
    return png(fig)


def heat(values: np.ndarray, signed: bool = False) -> np.ndarray:
    """One 2-D map per row, summed over channels: of |values|, or of the values themselves where `signed`."""
    values = np.asarray(values) if signed else np.abs(values)
    return values.sum(axis=-1) if values.ndim == 3 else values


def scale_words(signed: bool) -> str:
    """What a heat map's colours mean, for its caption."""
    if signed:
        return "diverging colour scale centred at 0 (red: positive, blue: negative)"
    return "sequential colour scale of the magnitude (dark: 0)"


def draw_map(fig, ax, values: np.ndarray, signed: bool, alpha: float = 1.0) -> None:
    """A heat map with its colour bar: diverging with limits symmetric about 0 where `signed`, else sequential."""
    if signed:
        limit = float(np.max(np.abs(values))) or 1.0
        shown = ax.imshow(values, cmap=DIVERGING, vmin=-limit, vmax=limit, alpha=alpha)
    else:
        shown = ax.imshow(values, cmap=SEQUENTIAL, alpha=alpha)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.tick_params(labelsize=6)


def mean_map(values: np.ndarray, signed: bool, title: str) -> str:
    """One dataset-wide map (a mean over rows), with its colour bar."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(3.4, 3))
    draw_map(fig, ax, heat(values, signed), signed)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return png(fig)


def _image(values: np.ndarray) -> np.ndarray:
    """An input as something imshow draws: 2-D grey, or RGB scaled to [0, 1]."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 3 and values.shape[-1] >= 3:
        values = values[..., :3]
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    return values


def saliency_grid(rows: list[dict], title: str, signed: bool = False, quantity: str = "gradient") -> str:
    """One column per example: its input, the heat map, and the heat map over the input (inputs where found);
    every map with its colour bar, on the diverging scale where `signed`, else of |`quantity`|."""
    plt = _matplotlib()
    with_input = any(r.get("input") is not None for r in rows)
    kinds = 3 if with_input else 1
    fig, axes = plt.subplots(kinds, len(rows), figsize=(2.3 * len(rows), 1.8 * kinds + 0.4), squeeze=False,
                             gridspec_kw={"wspace": 0.55})  # room for each map's colour bar and its ticks
    for i, row in enumerate(rows):
        cells = axes[:, i]
        for ax in cells:
            ax.set_xticks([])
            ax.set_yticks([])
        map_ = heat(row["gradient"], signed)
        if with_input and row.get("input") is not None:
            image = _image(row["input"])
            cells[0].imshow(image, cmap="gray")
            draw_map(fig, cells[1], map_, signed)
            cells[2].imshow(image, cmap="gray")
            draw_map(fig, cells[2], map_, signed, alpha=0.55)
        else:
            draw_map(fig, cells[1] if with_input else cells[0], map_, signed)
        cells[0].set_title(row["label"], fontsize=8)
        if i == 0:
            shown = quantity if signed else f"|{quantity}|"
            names = ["input", shown, "overlay"] if with_input else [shown]
            for ax, name in zip(cells, names):
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return png(fig)
