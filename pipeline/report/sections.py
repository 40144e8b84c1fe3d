"""Sections every page kind may show: the run (marker, counts, model, the settings that apply) and a ranking of one scalar column."""

from __future__ import annotations

import html
import json

from pipeline.report.describe import Words, applicable_settings, json_object, parse_spec, spec_words
from pipeline.report.figures import histogram, quantile_text, sketch_histogram
from pipeline.report.html import count_text, figure, key_text, section, table_html
from pipeline.report.passes import Ranked
from transforms.contract import MARKER_SUFFIX, metadata_key
from transforms.sketch import QuantileSketch

MAX_VARIABLES = 12  # weight variables named in the Run table; all of them are in the raw metadata


def marker_status(prefix: str, marker: dict | None, problem=None) -> tuple[str, str]:
    """(the Run table's status, a warning paragraph or ""): whether the marker vouches for the output."""
    if problem:
        return "not vouched for", f'<p class="warning">{html.escape(problem)} The page shows whatever shards are there.</p>'
    if marker is None:
        return "incomplete: no marker", (
            f'<p class="warning">No {html.escape(prefix)}{MARKER_SUFFIX} marker: this output is incomplete (a job still '
            "running, or one that failed or was cut short). The page shows whatever shards are there.</p>"
        )
    return "complete: the marker lists every shard, and each is there with its bytes and rows", ""


def weights_rows(text: str | None) -> list[tuple[str, str]]:
    """The weights' provenance (`beam_gradients.weights`) as rows: how many variables and parameters, which."""
    weights = json_object(text)
    if weights is None:
        return []  # absent or not an object: only the raw metadata shows it
    rows = []
    variables = weights.get("variables")
    if isinstance(variables, list):
        shown = ", ".join(map(str, variables[:MAX_VARIABLES]))
        more = len(variables) - MAX_VARIABLES
        rows.append(("weight variables", f"{len(variables):,}: {shown}" + (f" and {more:,} more" if more > 0 else "")))
    if weights.get("parameters") is not None:
        rows.append(("weight parameters", count_text(weights["parameters"])))
    if weights.get("projection") is not None:
        rows.append(("weight projection", json.dumps(weights["projection"], sort_keys=True)))
    return rows


def raw_metadata(metadata: dict[str, str]) -> str:
    """The output's metadata as written, one click away (escaped; the column declarations left out: long, and shown
    by the sections)."""
    shown = {k: _indented(v) for k, v in sorted(metadata.items()) if k != metadata_key("columns")}
    text = "\n".join(f"{k}: {v}" for k, v in shown.items()) or "(none)"
    return f"<details><summary>Raw metadata</summary><pre>{html.escape(text)}</pre></details>"


def _indented(text: str) -> str:
    """A metadata value that is a JSON object, indented one key a line; any other value as written."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return json.dumps(value, indent=1, sort_keys=True) if isinstance(value, dict) else text


# The counts a marker may hold, in the order shown: the main job's, and the influence job's (it reads no `rows_in`).
MARKER_COUNTS = (
    ("rows_in", "rows in"),
    ("query_rows", "query rows"),
    ("train_rows", "training rows"),
    ("train_rows_scored", "training rows scored"),
    ("train_rows_rejected", "training rows rejected"),
    ("rows_out", "rows out"),
    ("self_influence_rows", "self-influence rows"),
    ("rows_rejected", "rows rejected"),
)


def run_section(prefix: str, marker: dict | None, metadata: dict[str, str], summary_source: str, problem=None) -> str:
    """The run: the marker's status and counts, the model, what was taken and the settings that apply to it (from
    the settings' declarations, pipeline/report/describe.py); the raw metadata in a <details> block.

    `problem`: why the marker does not vouch for the output (corrupt, or a shard that differs), if it does not."""
    status, warning = marker_status(prefix, marker, problem)
    rows = [("status", status)]
    if marker is not None:
        counts = [(label, marker[key]) for key, label in MARKER_COUNTS if marker.get(key) is not None]
        rows += [(label, count_text(n) if type(n) is int else str(n)) for label, n in counts]  # a crafted one as text
        rows.append(("finished", marker.get("finished", "")))
    for key in ("model_path", "model_sha256", "version", "batch_size"):
        if metadata_key(key) in metadata:
            rows.append((key.replace("_", " "), metadata[metadata_key(key)]))
    spec = parse_spec(metadata.get(metadata_key("spec")))
    if spec is not None:
        rows.append(("taken", spec_words(spec).title))
        rows += [(name, value) for name, value in applicable_settings(spec)]
    rows += weights_rows(metadata.get(metadata_key("weights")))
    rows.append(("aggregates", summary_source))
    body = warning + table_html(["", ""], rows, "meta") + raw_metadata(metadata)
    return section("Run", body, "run")


def ranked_section(ranked: Ranked, title: str, text: str, name: str, anchor: str | None = None, table: bool = True) -> str:
    """`name` names the figure and the table (their class); `anchor`, the section (`name` where not given); `table`
    False leaves the top rows' table to the caller (one with more columns)."""
    if not ranked.rows:
        return ""
    body = f"<p>{html.escape(text)}</p><p>{ranked.rows:,} rows; mean {ranked.total / ranked.rows:.4g}; largest {ranked.largest:.4g}.</p>"
    url, drawn = sketch_histogram(ranked.sketch, f"{ranked.shown}: rows per bin", ranked.shown)
    body += figure(url, f"histogram of {ranked.shown} over all {ranked.rows:,} rows ({quantile_text(drawn)})", f"{name}-histogram", drawn)
    if table:
        rows = [(i + 1, f"{v:.4g}", key_text(k)) for i, (v, k) in enumerate(ranked.best)]
        body += table_html(["rank", ranked.shown, "row"], rows, name)
    return section(title, body, anchor or name)


def norm_histogram(entry: dict, name: str, words: Words) -> str:
    """The per-row norm histogram: from the job's quantile sketch (bins follow the data), or for a summary written
    before the sketch, its fixed log bins."""
    what = f"L2 norm of the row's {words.quantity}"
    if "norm_sketch" in entry:
        url, drawn = sketch_histogram(QuantileSketch.from_json(entry["norm_sketch"]), f"{name}: per-row L2 norm", what)
        caption = f"{name}: histogram of per-row {words.quantity} norms, all {count_text(entry['count'])} rows ({quantile_text(drawn)})"
        return figure(url, caption, "norm-histogram", drawn)
    counts = entry["norm_histogram"]
    return figure(histogram(counts, f"{name}: per-row L2 norm", what), f"{name}: histogram of per-row {words.quantity} norms",
                  "norm-histogram", {"counts": counts, "edges": None, "axis": "log"})
