"""Grad-CAM in the report (issue 19): each shown row's map over its own input image, on one scale with a colour bar."""

import os
import re

import numpy as np

import pipeline.report.overlay as overlay
from pipeline.reader import read_arrays
from pipeline.report import write_report
from tests.conftest import run_on, write_parquet
from tests.test_report import charts, images

DATA = os.path.join(os.path.dirname(__file__), "data")


def test_grad_cam_overlays_draw_the_top_rows_over_their_inputs(tmp_path, monkeypatch):
    x = np.load(os.path.join(DATA, "grad_cam_inputs.npy"))
    x = np.concatenate([x, x[::-1] * 0.5])  # 12 RGB images, 16 x 16
    write_parquet(tmp_path / "in/0.parquet", {"id": np.arange(len(x)), "x": x})
    run_on(tmp_path, os.path.join(DATA, "grad_cam_cnn.keras"), "--method", "grad_cam", "--target", "predicted",
           "--batch_size", "5")
    drawn = []
    real = overlay.cam_grid
    monkeypatch.setattr(overlay, "cam_grid", lambda rows, title: drawn.extend(rows) or real(rows, title))
    page = open(write_report(str(tmp_path / "out/g"), str(tmp_path / "in/*.parquet"), str(tmp_path / "r.html"),
                             top=3, sample=2)).read()
    output = read_arrays(str(tmp_path / "out/g"))
    maps = output["gradient"].astype(np.float64)
    assert maps.shape == (12, 16, 16)
    norms = np.sqrt((maps**2).reshape(12, -1).sum(1))
    top = output["id"][np.argsort(-norms, kind="stable")[:3]]
    grids = charts(page, "cam-overlay")
    assert [g["rows"] for g in grids][0] == [f"id={i}" for i in top]  # top rows by norm, as numpy ranks them
    assert len(grids) == 2 and len(grids[1]["rows"]) == 2  # and the seeded sample
    for grid in grids:
        keys = [int(label.split("=")[1]) for label in grid["rows"]]
        assert grid["with_input"] == [True] * len(keys)
        assert np.isclose(grid["top"], max(maps[list(output["id"]).index(k)].max() for k in keys), rtol=1e-6)
    for row in drawn:  # each map over its own image: joined by key from the input files, channels kept
        key = int(row["label"].split("=")[1])
        np.testing.assert_array_equal(row["input"], x[key].astype(np.float64))
        np.testing.assert_array_equal(row["gradient"], output["gradient"][list(output["id"]).index(key)])
    assert len(images(page)) >= 4  # every image decodes
    overlays = re.findall(r'data-chart="cam-overlay"[^>]*><img [^>]*src="([^"]+)"', page)
    for source in overlays:
        (picture,) = images(f'<img src="{source}">')
        rgb = np.asarray(picture.convert("RGB"), np.int64)
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 60).any()  # coloured (jet over the image), not grey
    assert len(overlays) == 2
