"""The report's figures: matplotlib drawn off-screen, returned as base64 PNG `data:` URLs (the page fetches nothing)."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

from transforms.aggregates import HISTOGRAM_EDGES


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


def histogram(counts: Sequence[int], title: str, xlabel: str) -> str:
    """The job's log-spaced histogram, cut to the bins that hold rows."""
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
            ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    extra = []
    if counts[0]:
        extra.append(f"{counts[0]} below {edges[0]:g}")
    if counts[-1]:
        extra.append(f"{counts[-1]} above {edges[-1]:g}")
    ax.set_title(title + (f" ({'; '.join(extra)})" if extra else ""))
    return png(fig)


def heat(values: np.ndarray) -> np.ndarray:
    """|gradient| summed over channels: one 2-D map per row."""
    values = np.abs(values)
    return values.sum(axis=-1) if values.ndim == 3 else values


def _image(values: np.ndarray) -> np.ndarray:
    """An input as something imshow draws: 2-D grey, or RGB scaled to [0, 1]."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 3 and values.shape[-1] >= 3:
        values = values[..., :3]
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    return values


def saliency_grid(rows: list[dict], title: str) -> str:
    """One row per example: its input, the heat map, and the heat map over the input (inputs where found)."""
    plt = _matplotlib()
    with_input = any(r.get("input") is not None for r in rows)
    kinds = 3 if with_input else 1
    fig, axes = plt.subplots(kinds, len(rows), figsize=(1.7 * len(rows), 1.8 * kinds + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        cells = axes[:, i]
        for ax in cells:
            ax.set_xticks([])
            ax.set_yticks([])
        map_ = heat(row["gradient"])
        if with_input and row.get("input") is not None:
            image = _image(row["input"])
            cells[0].imshow(image, cmap="gray")
            cells[1].imshow(map_, cmap="inferno")
            cells[2].imshow(image, cmap="gray")
            cells[2].imshow(map_, cmap="inferno", alpha=0.55)
        else:
            (cells[1] if with_input else cells[0]).imshow(map_, cmap="inferno")
        cells[0].set_title(row["label"], fontsize=8)
        if i == 0:
            names = ["input", "|gradient|", "overlay"] if with_input else ["|gradient|"]
            for ax, name in zip(cells, names):
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return png(fig)
