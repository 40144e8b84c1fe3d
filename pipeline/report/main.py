"""The main job's page: the run, gradients (saliency maps, feature importance, norm histograms), rankings, classes, rejected rows.

Sections come from the output's declared columns (`beam_gradients.columns`): the
key columns, the gradient outputs, and the kinds that get a ranking or a class
chart. A column's name is shown, never read for meaning.
"""

from __future__ import annotations

import html

import numpy as np
import pyarrow as pa

from pipeline.reader import iter_tables, read_summary
import pipeline.report.figures as figures  # the module, so tests can patch its functions
from pipeline.report.describe import Words, parse_spec, spec_words
from pipeline.report.figures import bars, quantile_text, sketch_histogram
from pipeline.report.html import Section, count_text, figure, key_text, section, slug, table_html
from pipeline.report.passes import (
    Classes,
    Ranked,
    blocks_from_declared,
    blocks_from_summary,
    is_image,
    key_id,
    stream_inputs,
    stream_output,
)
from pipeline.report.classes import class_sections, input_label_column
from pipeline.report.overlay import cam_method, cam_sections
from pipeline.report.rejected import rejected_section
from pipeline.report.sections import norm_histogram, ranked_section, run_section
from pipeline.report.text import text_sections, token_layer_outputs
from pipeline.report.weights import weight_sections
from transforms.aggregates import AggregateSpec, summarize
from transforms.contract import KEY, REJECTED_SUFFIX, columns_of_kind, declared_columns, metadata_key, summary_path
from transforms.sketch import QuantileSketch

# The marker lists the main job's rejected shards under this output's name.
REJECTED_OUTPUT = "--rejected"
LOSS, CLASS = "loss", "class"  # the engine's kinds of the loss and of the class targets' columns
# Kinds of per-row scalar columns that get a ranking of their own: (title, what it means).
RANKED_KINDS = {
    "weight_norm": ("Weight-gradient norm", "Rows whose whole weight gradient is largest: the self-influence ranking "
                    "(TracIn's self-influence is its square). Mislabeled and unusual rows tend to rank high."),
    "ig_delta": ("Integrated-gradients completeness gap", "|sum of attributions - (f(x) - f(baseline))| per row: "
                 "large gaps mean more --steps are needed."),
}
# Kinds ranked for every head; the others only for their first column (a weight norm's per-layer columns follow the model's).
PER_HEAD = {"ig_delta"}


def ranked_columns(entries) -> list[dict]:
    """The declared columns that get a ranking: every `ig_delta` (one per head), the model's `weight_norm`."""
    chosen, seen = [], set()
    for entry in entries or ():
        kind = entry["kind"]
        if kind in RANKED_KINDS and (kind in PER_HEAD or kind not in seen):
            chosen.append(entry)
        seen.add(kind)
    return chosen


def ranked_text(entry: dict) -> tuple[str, str, bool]:
    """(title, explanation, whether the column is named as its kind): a head's column is titled by its head."""
    title, text = RANKED_KINDS[entry["kind"]]
    plain = entry["column"] == entry["kind"]  # the only one of its kind: a fixed anchor; a head's: a slug of its name
    head = entry["head"]
    if head is None and not plain:  # the engine does not declare heads yet: the column's name after its kind's
        head = entry["column"].split("__", 1)[-1]
    return (title + (f": {head}" if head else ""), text, plain)


def image_maps(name: str, entry: dict, saliency: list, words: Words) -> list[str]:
    """An image gradient's maps: the mean |value| over all rows (and the signed mean where values are signed), then
    the saliency grids; every map with a colour bar, its scale said in the caption."""
    quantity = words.quantity
    parts = [figure(figures.mean_map(np.asarray(entry["mean_abs"], np.float64), False, f"mean |{quantity}|"),
                    f"{name}: mean |{quantity}| over all rows; {figures.scale_words(False)}", "mean-saliency")]
    if words.signed:
        parts.append(figure(figures.mean_map(np.asarray(entry["mean"], np.float64), True, f"mean {quantity}"),
                            f"{name}: mean {quantity} over all rows (summed over channels); {figures.scale_words(True)}",
                            "mean-signed"))
    shown = quantity if words.signed else f"|{quantity}|"
    for title, rows in saliency:
        if rows:
            parts.append(
                figure(
                    figures.saliency_grid(rows, f"{name}: {title}", signed=words.signed, quantity=quantity),
                    f"{name}: {title}; {shown} summed over channels, each map on its own {figures.scale_words(words.signed)}",
                    "saliency",
                    [r["label"] for r in rows],
                )
            )
    return parts


def gradient_sections(summary: dict, blocks, saliency: dict[str, list[tuple[str, list[dict]]]], words: Words, top: int) -> list[Section]:
    """One section per gradient output, titled by what was taken (`words`); `top` rows in every top list."""
    parts = []
    mean_abs_text = f"mean |{words.quantity}|"
    for block in blocks:
        entry = summary["gradients"][block.name]
        body = [f"<p>{html.escape(words.title)}: {html.escape(count_text(entry['count']))} rows; shape {html.escape(str(tuple(block.shape)))}.</p>"]
        mean_abs = np.asarray(entry["mean_abs"], np.float64)
        if block.features is not None:
            labels = list(block.features)
            body.append(
                figure(
                    bars(labels, mean_abs.tolist(), f"{block.name}: {mean_abs_text} per feature", mean_abs_text),
                    f"{block.name}: feature importance ({mean_abs_text}), all rows",
                    "feature-importance",
                    {"gradient": block.name, "group": None, "features": labels, "mean_abs": mean_abs.tolist()},
                )
            )
            for group, g in list((entry.get("groups") or {}).items())[:12]:
                heights = np.asarray(g["mean_abs"], np.float64).tolist()
                body.append(
                    figure(
                        bars(labels, heights, f"{block.name}, {summary['group_column']} = {group}", mean_abs_text),
                        f"{block.name}: feature importance where {summary['group_column']} = {group} ({count_text(g['count'])} rows)",
                        "feature-importance",
                        {"gradient": block.name, "group": group, "features": labels, "mean_abs": heights},
                    )
                )
        elif is_image(block):
            body += image_maps(block.name, entry, saliency.get(block.name, []), words)
        elif mean_abs.size <= 64:
            labels = [str(i) for i in range(mean_abs.size)]
            body.append(
                figure(
                    bars(labels, mean_abs.ravel().tolist(), f"{block.name}: {mean_abs_text} per element", mean_abs_text),
                    f"{block.name}: {mean_abs_text} per element",
                    "element-importance",
                    {"gradient": block.name, "mean_abs": mean_abs.ravel().tolist()},
                )
            )
        body.append(norm_histogram(entry, block.name, words))
        rows = [(f"{t['norm']:.4g}", key_text(t["keys"])) for t in (entry.get("top_by_norm") or [])[:top]]
        if rows:
            body.append(f"<h3>Largest {html.escape(words.quantity)} norms</h3>" + table_html(["norm", "row"], rows, "top-by-norm"))
        parts.append(section(f"{words.method}: {block.name}", "".join(body), slug(f"gradient-{block.name}")))
    if summary.get("top_by_loss"):
        rows = [(f"{t['loss']:.4g}", key_text(t["keys"])) for t in summary["top_by_loss"][:top]]
        body = table_html(["loss", "row"], rows, "top-by-loss")
        if "loss_sketch" in summary:
            url, drawn = sketch_histogram(QuantileSketch.from_json(summary["loss_sketch"]), "per-row loss", "loss")
            body = figure(url, f"histogram of the per-row loss ({quantile_text(drawn)})", "loss-histogram", drawn) + body
        parts.append(section("Largest losses", body, "loss"))
    return parts


def main_job_sections(prefix, schema, marker, metadata, input_pattern, top, sample, seed, problem=None) -> list[str]:
    complete = marker is not None and problem is None
    words = spec_words(parse_spec(metadata.get(metadata_key("spec"))))
    summary = read_summary(prefix)
    entries = declared_columns(schema.metadata)
    if entries is not None:
        keys = columns_of_kind(entries, KEY)
    else:  # written before outputs declared their columns: only the summary names the keys
        keys = [k for k in (summary or {}).get("key_columns") or () if k in schema.names]
    if summary is not None:
        source = f"{summary_path(prefix)}, computed by the job"
        blocks = blocks_from_summary(summary)
    else:  # an output written before the job wrote summaries: the same combiner, streamed here
        blocks = blocks_from_declared(entries, schema)
        source = "computed here from the output (no summary file)"
        loss = next(iter(columns_of_kind(entries, LOSS)), None)
        spec = AggregateSpec(tuple(blocks), tuple(keys), None, loss, max(top, 1))
        columns = list(dict.fromkeys(keys + [c for b in blocks for c in b.columns] + ([loss] if loss else [])))
        summary = summarize(iter_tables(prefix, columns, require_complete=False), spec)
    blocks = [b for b in blocks if b.name not in token_layer_outputs(entries)]  # drawn as tokens (text.py)
    ranked = [(Ranked(entry["column"], keys, top), entry) for entry in ranked_columns(entries)]
    classes = [Classes(c) for c in columns_of_kind(entries, CLASS)]
    wanted_by_block = {}
    for block in blocks:
        if not is_image(block):
            continue
        entry = summary["gradients"][block.name]
        sets = {f"top {top} rows by {words.quantity} norm": [t["keys"] for t in entry["top_by_norm"][:top] if t["keys"]]}
        if summary.get("top_by_loss"):
            sets[f"top {top} rows by loss"] = [t["keys"] for t in summary["top_by_loss"][:top] if t["keys"]]
        wanted_by_block[block.name] = sets
    wanted = {key_id(k, keys) for sets in wanted_by_block.values() for rows in sets.values() for k in rows}
    found, sampled = stream_output(
        prefix, blocks, keys, wanted, sample if wanted_by_block else 0, seed, [r for r, _ in ranked] + classes, complete
    )
    inputs: dict[str, dict] = {}
    note = ""
    if wanted_by_block and input_pattern:
        if keys:
            need = wanted | {key for key, _ in sampled}
            inputs = stream_inputs(input_pattern, keys, need, [b for b in blocks if is_image(b)])
        else:
            note = "<p>The inputs cannot be shown: the job kept no key column (--keep_columns) to join them by.</p>"
    elif wanted_by_block:
        note = "<p>Run the report with --input (the job's input files) to see each row's input beside its heat map.</p>"
    saliency = {}
    for name, sets in wanted_by_block.items():
        groups = []
        for title, rows in sets.items():
            made = []
            for k in rows:
                key = key_id(k, keys)
                if key in found:
                    made.append(
                        {"label": key_text(k), "gradient": found[key]["gradients"][name], "input": inputs.get(key, {}).get(name)}
                    )
            groups.append((title, made))
        groups.append(
            (
                f"a random sample (seed {seed})",
                [
                    {"label": key_text(row["keys"]), "gradient": row["gradients"][name], "input": inputs.get(key, {}).get(name)}
                    for key, row in sampled
                ],
            )
        )
        saliency[name] = groups
    parts = [run_section(prefix, marker, metadata, source, problem)]
    if note:
        parts.append(note)
    cam = cam_method(metadata)  # Grad-CAM maps: drawn over their images (overlay.py), not as |gradient|
    parts += gradient_sections(summary, blocks, {} if cam else saliency, words, top) + (cam_sections(words.method, saliency) if cam else [])
    parts += text_sections(prefix, entries, summary, keys, top, sample, seed, complete, words)
    for r, entry in ranked:
        title, text, plain = ranked_text(entry)
        anchor = None if plain else slug(r.column)  # a head's: a name from data
        parts.append(ranked_section(r, title, text, r.column.replace("_", "-"), anchor))
    for c in classes:
        labels = [str(k) for k in sorted(c.counts)]
        heights = [c.counts[k] for k in sorted(c.counts)]
        scalar = not isinstance(schema.field(c.column).type, pa.FixedShapeTensorType)
        what = "the predicted class" if scalar else "the top class of the top k"
        body = figure(bars(labels, heights, f"{c.column}: rows per class", "rows"), f"rows per class: {what}", "classes",
                      dict(zip(labels, heights)))
        parts.append(section(f"Classes: {c.column}", body, c.column.replace("_", "-")))
    parts += class_sections(prefix, schema, entries, metadata, blocks, complete, summary)
    parts += weight_sections(prefix, entries, keys, complete, top, input_pattern, input_label_column(metadata))
    if complete and REJECTED_OUTPUT in marker["outputs"]:  # exactly the rejected shards the marker lists
        parts.append(rejected_section(prefix, complete, REJECTED_OUTPUT))
    else:
        parts.append(rejected_section(prefix + REJECTED_SUFFIX, complete))
    return parts
