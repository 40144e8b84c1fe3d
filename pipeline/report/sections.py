"""Sections every page kind may show: the run (marker, metadata, spec) and a ranking of one scalar column."""

from __future__ import annotations

import html
import json

from pipeline.report.figures import histogram
from pipeline.report.html import count_text, figure, key_text, section, table_html
from pipeline.report.passes import Ranked
from transforms.contract import MARKER_SUFFIX, metadata_key


def run_section(prefix: str, marker: dict | None, metadata: dict[str, str], summary_source: str, problem=None) -> str:
    """`problem`: why the marker does not vouch for the output (corrupt, or a shard that differs), if it does not."""
    rows = []
    if problem:
        warning = f'<p class="warning">{html.escape(problem)} The page shows whatever shards are there.</p>'
    elif marker is None:
        warning = (
            f'<p class="warning">No {html.escape(prefix)}{MARKER_SUFFIX} marker: this output is incomplete (a job still '
            "running, or one that failed or was cut short). The page shows whatever shards are there.</p>"
        )
    else:
        warning = ""
    if marker is not None:
        rows += [
            ("rows in", count_text(marker.get("rows_in", 0))),
            ("rows out", count_text(marker.get("rows_out", 0))),
            ("rows rejected", count_text(marker.get("rows_rejected", 0))),
            ("finished", marker.get("finished", "")),
        ]
    for key in ("model_path", "model_sha256", "batch_size", "version"):
        if metadata_key(key) in metadata:
            rows.append((key.replace("_", " "), metadata[metadata_key(key)]))
    spec = metadata.get(metadata_key("spec"))
    if spec:
        try:
            rows += [(f"spec: {k}", v) for k, v in json.loads(spec).items() if v not in (None, (), [], "")]
        except ValueError:
            rows.append(("spec", spec))
    weights = metadata.get(metadata_key("weights"))
    if weights:
        rows.append(("weights", weights))
    rows.append(("aggregates", summary_source))
    return section("Run", warning + table_html(["", ""], rows, "meta"), "run")


def ranked_section(ranked: Ranked, title: str, text: str, name: str, anchor: str | None = None) -> str:
    """`name` names the figure and the table (their class); `anchor`, the section (`name` where not given)."""
    if not ranked.rows:
        return ""
    body = f"<p>{html.escape(text)}</p><p>{ranked.rows:,} rows; mean {ranked.total / ranked.rows:.4g}; largest {ranked.largest:.4g}.</p>"
    body += figure(histogram(ranked.counts, f"|{ranked.column}|", f"|{ranked.column}|"), f"histogram of |{ranked.column}|", f"{name}-histogram", ranked.counts.tolist())
    rows = [(i + 1, f"{v:.4g}", key_text(k)) for i, (v, k) in enumerate(ranked.best)]
    body += table_html(["rank", f"|{ranked.column}|", "row"], rows, name)
    return section(title, body, anchor or name)
