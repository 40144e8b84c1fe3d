"""Grad-CAM overlays: each shown row's class-activation map drawn over its input image, with a colour bar.

Why apart from saliency maps: a Grad-CAM map (`--method grad_cam`, `grad_cam_pp`) is not a
gradient to take |.| of and sum over channels; it is one non-negative map per row at the
input's height and width, read against the picture. It is drawn in `jet` at alpha 0.5 over
the input (grey, or RGB scaled to [0, 1]), on one scale for all rows shown, from 0 to the
largest value among them (the bicubic resize can dip a little below 0 near edges: clipped at
0). Which outputs are Grad-CAM maps comes from the run's spec (`beam_gradients.spec`), never
from a column's name.
"""

from __future__ import annotations

import html

import numpy as np

from pipeline.report.describe import parse_spec
from pipeline.report.figures import _image, _matplotlib, png
from pipeline.report.html import Section, figure, section, slug
from transforms.contract import metadata_key

CAM_METHODS = ("grad_cam", "grad_cam_pp")
CMAP, ALPHA = "jet", 0.5


def cam_method(metadata: dict[str, str]) -> str | None:
    """The run's method where it maps a layer onto the input image (grad_cam, grad_cam_pp), else None."""
    method = (parse_spec(metadata.get(metadata_key("spec"))) or {}).get("method")
    return method if method in CAM_METHODS else None


def cam_grid(rows: list[dict], title: str) -> tuple[str, float]:
    """One panel per row: the map over its input (the map alone where no input was found); a shared colour bar.
    Returns the PNG's data URL and the top of the scale."""
    plt = _matplotlib()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    top = max((float(np.max(r["gradient"])) for r in rows), default=0.0) or 1.0
    fig, axes = plt.subplots(1, len(rows), figsize=(1.9 * len(rows) + 0.8, 2.3), squeeze=False)
    for ax, row in zip(axes[0], rows):
        ax.set_xticks([])
        ax.set_yticks([])
        cam = np.clip(np.asarray(row["gradient"], np.float64), 0, None)
        if row.get("input") is not None:
            ax.imshow(_image(np.asarray(row["input"], np.float64)), cmap="gray")
            ax.imshow(cam, cmap=CMAP, alpha=ALPHA, vmin=0, vmax=top)
        else:
            ax.imshow(cam, cmap=CMAP, vmin=0, vmax=top)
        ax.set_title(row["label"], fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0, top), CMAP), ax=list(axes[0]), fraction=0.04, pad=0.02, label="map value")
    fig.suptitle(title, fontsize=10)
    return png(fig), top


def cam_sections(method: str, saliency: dict[str, list[tuple[str, list[dict]]]]) -> list[Section]:
    """A section per Grad-CAM output: its rows (top by norm, by loss, a seeded sample) as overlays."""
    parts = []
    for name, groups in saliency.items():
        with_inputs = any(r.get("input") is not None for _, rows in groups for r in rows)
        body = [f"<p>{html.escape(method)} maps over the input images ({CMAP} at alpha {ALPHA}; one scale from 0 to the "
                "largest value shown" + ("" if with_inputs else "; run the report with --input to see the images under "
                                         "the maps") + ").</p>"]
        for title, rows in groups:
            if not rows:
                continue
            url, top = cam_grid(rows, f"{name}: {title}")
            body.append(figure(url, f"{name} ({method}): {title}", "cam-overlay",
                               {"rows": [r["label"] for r in rows], "top": top,
                                "with_input": [r.get("input") is not None for r in rows]}))
        parts.append(section(f"{method} overlays: {name}", "".join(body), slug(f"cam-{name}")))
    return parts
