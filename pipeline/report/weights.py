"""Weight gradients: the per-layer norm distributions side by side, and the rows of the largest norm with their inputs.

`--wrt weights --weight_output norm` writes one column of kind `weight_norm` for the
whole model, then one per layer; the columns are told apart by their declared kind
and order, and shown by name. One streamed pass keeps a quantile sketch per column
(memory bounded by the values' range, not the rows) and the top rows of the first.
"""

from __future__ import annotations

import html

import numpy as np

from pipeline.reader import iter_tables, to_numpy
from pipeline.report.figures import _matplotlib, png
from pipeline.report.gallery import inputs_or_note, strip
from pipeline.report.html import Section, count_text, figure, key_text, section, table_html
from pipeline.report.passes import Ranked, key_id
from transforms.contract import columns_of_kind
from transforms.sketch import QuantileSketch

WEIGHT_NORM = "weight_norm"  # the engine's kind of a weight-gradient norm column
QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}


def norm_boxes(stats: dict[str, dict]) -> str:
    """One box per column on one axis: the box from the 25th to the 75th percentile, the median, whiskers 5th-95th."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(stats) + 2), 3.2))
    boxes = [{"label": name, "whislo": s["q05"], "q1": s["q25"], "med": s["q50"], "q3": s["q75"], "whishi": s["q95"],
              "fliers": [s["min"], s["max"]]} for name, s in stats.items()]
    ax.bxp(boxes, showfliers=True)
    low = min(s["min"] for s in stats.values())
    high = max(s["max"] for s in stats.values())
    if low > 0 and high / low > 100:
        ax.set_yscale("log")
    ax.set_ylabel("L2 norm of the row's weight gradient")
    for label in ax.get_xticklabels():  # layer names are long: slanted, so they never overlap
        label.set(rotation=25, ha="right", fontsize=8)
    ax.set_title("weight-gradient norm per layer (box 25-75%, whiskers 5-95%, dots min and max)", fontsize=9)
    return png(fig)


def weight_sections(prefix: str, entries, keys, complete: bool, top: int, input_pattern: str | None = None,
                    label_column: str | None = None) -> list[Section]:
    """The weight-norm section, where the output has weight_norm columns; `label_column` names the inputs' labels."""
    columns = columns_of_kind(entries, WEIGHT_NORM)
    if not columns:
        return []
    sketches = {c: QuantileSketch() for c in columns}
    largest = Ranked(columns[0], keys, top)
    for table in iter_tables(prefix, list(dict.fromkeys(list(keys) + columns)), require_complete=complete):
        largest.add(table)
        for c, sketch in sketches.items():
            values = np.asarray(to_numpy(table.column(c)), np.float64)
            sketch.add(values[np.isfinite(values)])
    if not largest.rows:
        return []
    stats = {c: {**{k: s.quantile(q) for k, q in QUANTILES.items()}, "min": s.minimum, "max": s.maximum, "rows": s.count}
             for c, s in sketches.items()}
    body = [f"<p>{count_text(largest.rows)} rows. The norm of each row's gradient with respect to the model's weights "
            "(the first column) and to each layer's; rows with large norms are those the model would change most for: "
            "often unusual or mislabeled.</p>",
            figure(norm_boxes(stats), "weight-gradient norms per layer, on one axis", "weight-norm-layers", stats)]
    best = largest.best[:top]
    inputs, note = {}, ""
    if input_pattern and keys and best:
        inputs, note = inputs_or_note(input_pattern, keys, {key_id(k, keys) for _, k in best}, label_column)
        body.append(note)
    rows = []
    for i, (value, k) in enumerate(best):
        found = inputs.get(key_id(k, keys), {})
        caption = f"#{i + 1} {key_text(k)}\n{value:.3g}" + (f", {label_column} {found['label']}" if found.get("label") is not None else "")
        rows.append({"image": found.get("image"), "caption": caption, "keys": k, "value": value, "label": found.get("label")})
    url = strip(rows, f"the {len(rows)} rows with the largest {columns[0]}") if rows else None
    if url:
        body.append(figure(url, f"the inputs of the {len(rows)} rows with the largest {columns[0]}", "weight-norm-inputs",
                           [key_text(r["keys"]) for r in rows]))
    elif not input_pattern:
        body.append("<p>Run the report with --input (the job's input files) to see these rows' inputs.</p>")
    header = ["rank", columns[0], "row"] + ([label_column] if label_column and inputs else [])
    cells = [[i + 1, f"{r['value']:.4g}", key_text(r["keys"])] + ([r["label"]] if label_column and inputs else []) for i, r in enumerate(rows)]
    body.append(f"<h3>Largest {html.escape(columns[0])}</h3>" + table_html(header, cells, "weight-norm-top"))
    return [section("Weight gradients by layer", "".join(body), "weight-gradients")]
