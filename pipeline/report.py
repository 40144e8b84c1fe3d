"""`beam-gradients report OUTPUT_PREFIX`: one self-contained HTML page about a job's output.

Saliency maps for image-shaped gradients (the input beside its heat map, and
an overlay), feature-importance bars for tabular ones (per output and group),
the norm histogram, rejected rows by stage and reason, the run's metadata, and
where such columns or outputs exist: the weight-gradient ranking
(`weight_norm`), integrated-gradient completeness gaps (`ig_delta`),
influence neighbours and self-influence. Figures are PNGs embedded as base64,
so the page needs no network. The output is streamed table by table, never
loaded whole; dataset-wide numbers come from the job's `<output>-summary.json`
(computed by the same combiner here, streaming, where an older output has none).

Pages are data: every string that reaches the page (column, model input and
output names, key values, groups, reasons, metadata, the marker's and the
summary's fields) is escaped, anchors are slugs of names (never the names), and
a Content-Security-Policy allows only the page's inline styles and `data:` images:
the page runs no script.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import html
import io
import json
import os
import re
import sys
from typing import Sequence

import numpy as np
import pyarrow as pa

from transforms.contract import MARKER_SUFFIX, REJECTED_SUFFIX, SELF_INFLUENCE_SUFFIX, TRAIN_PREFIX, metadata_key, report_path
from pipeline.outputs import CorruptMarker
from pipeline.options import OptionsError, check_prefix
from pipeline.reader import (
    IncompleteOutput,
    OutputMismatch,
    find_marker,
    iter_listed,
    iter_tables,
    output_metadata,
    output_shards,
    read_summary,
    to_numpy,
    verify_output,
)
from transforms.aggregates import HISTOGRAM_EDGES, AggregateSpec, GradientBlock, top_entries, top_candidates, histogram_counts
from transforms.aggregates import summarize
from transforms.io.files import InputError, match_files, open_parquet

INFLUENCE_COLUMNS = {"rank", "kind", "score"}
# Per-row scalar columns that get a section of their own where an output has them.
RANKED_COLUMNS = {
    "weight_norm": ("Weight-gradient norm", "Rows whose whole weight gradient is largest: the self-influence ranking "
                    "(TracIn's self-influence is its square). Mislabeled and unusual rows tend to rank high."),
    "ig_delta": ("Integrated-gradients completeness gap", "|sum of attributions - (f(x) - f(baseline))| per row: "
                 "large gaps mean more --steps are needed."),
}
MAX_REASONS, MAX_QUERIES = 30, 20
# Class columns the class targets write: the predicted class, and the top k classes per row.
CLASS_COLUMNS = ("predicted_class", "top_k_classes")


def ranked_columns(names: Sequence[str]) -> list[str]:
    """`weight_norm`, and `ig_delta` with any `__<head>` suffix."""
    return [n for n in names if n == "weight_norm" or n == "ig_delta" or n.startswith("ig_delta__")]


def ranked_text(column: str) -> tuple[str, str]:
    title, text = RANKED_COLUMNS[column.split("__", 1)[0]]
    return (title + column[len(column.split("__", 1)[0]) :].replace("__", ": "), text)


# ---------------------------------------------------------------- figures


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


def figure(url: str, caption: str, chart: str, values=None) -> str:
    """An <img> in a <figure>; `values` (what was drawn) ride along as JSON in data-values."""
    data = f" data-values='{html.escape(json.dumps(values), quote=True)}'" if values is not None else ""
    return (
        f'<figure data-chart="{html.escape(chart)}"{data}><img alt="{html.escape(caption)}" src="{html.escape(url)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


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


# ---------------------------------------------------------------- shapes


def is_image(block: GradientBlock) -> bool:
    shape = block.shape
    if block.features is not None:
        return False
    return (len(shape) == 3 and shape[-1] in (1, 3, 4) and min(shape[:2]) >= 2) or (len(shape) == 2 and min(shape) >= 2)


def blocks_from_summary(summary: dict) -> list[GradientBlock]:
    return [
        GradientBlock(name, tuple(g["columns"]), tuple(g["shape"]), tuple(g["features"]) if g["features"] else None)
        for name, g in summary["gradients"].items()
    ]


def blocks_from_schema(schema: pa.Schema) -> list[GradientBlock]:
    """For an output without a summary: tensor columns named gradient*; scalar gradient__<feature> columns as one block."""
    blocks, scalars = [], []
    for field in schema:
        if not field.name.startswith("gradient"):
            continue
        if isinstance(field.type, pa.FixedShapeTensorType):
            blocks.append(GradientBlock(field.name, (field.name,), tuple(field.type.shape)))
        elif pa.types.is_floating(field.type):
            scalars.append(field.name)
    if scalars:
        features = tuple(name.split("__", 1)[-1] for name in scalars)
        blocks.append(GradientBlock("gradient", tuple(scalars), (len(scalars),), features))
    return blocks


def key_text(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items()) or "(no key columns kept)"


def _key_tuple(row: dict, names: Sequence[str]) -> str:
    return json.dumps([row.get(n) for n in names], default=str)


def sample_rank(key: str, seed: int) -> int:
    """A row's place in the seeded random sample: the rows with the smallest values are the sample, in any order read."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "big")


# ---------------------------------------------------------------- streaming passes


class _Ranked:
    """Top rows of one scalar column by |value|, with a histogram of |value|, over streamed tables."""

    def __init__(self, column: str, keys: Sequence[str], top: int):
        self.column, self.keys, self.top = column, list(keys), top
        self.counts = np.zeros(len(HISTOGRAM_EDGES) + 1, np.int64)
        self.best: list = []
        self.rows, self.total, self.largest = 0, 0.0, 0.0

    def add(self, table: pa.Table) -> None:
        values = np.abs(np.asarray(to_numpy(table.column(self.column)), np.float64))
        if not len(values):
            return
        self.rows += len(values)
        self.total += float(values.sum())
        self.largest = max(self.largest, float(values.max()))
        self.counts += histogram_counts(values)
        self.best = top_entries(self.best + top_candidates(table, values, self.keys, self.top), self.top)


class _Classes:
    """How often each class is the row's (first) class, streamed."""

    def __init__(self, column: str):
        self.column = column
        self.counts: collections.Counter = collections.Counter()

    def add(self, table: pa.Table) -> None:
        values = np.asarray(to_numpy(table.column(self.column)))
        first = values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values
        self.counts.update(int(v) for v in first)


def stream_output(prefix: str, blocks, keys, wanted: set[str], sample: int, seed: int, ranked: list, complete):
    """One pass over the output: gradients of the wanted rows (by key) and of a seeded random sample; ranked columns."""
    image_blocks = [b for b in blocks if is_image(b)]
    columns = list(dict.fromkeys(list(keys) + [c for b in image_blocks for c in b.columns] + [r.column for r in ranked]))
    # `ranked`: anything with .column and .add(table), fed every table of the pass
    found: dict[str, dict] = {}
    sampled: list[tuple[int, str, dict]] = []  # (rank, key, row)
    position = 0
    for table in iter_tables(prefix, columns, require_complete=complete):
        for r in ranked:
            r.add(table)
        if not image_blocks:
            continue
        ids = (
            [_key_tuple(row, keys) for row in table.select(list(keys)).to_pylist()]
            if keys
            else [json.dumps(["row", position + i]) for i in range(table.num_rows)]
        )
        position += table.num_rows
        ranks = np.array([sample_rank(k, seed) for k in ids], dtype=np.uint64)
        cut = sampled[-1][0] if len(sampled) >= sample else None
        picks = [i for i, k in enumerate(ids) if k in wanted or (sample and (cut is None or ranks[i] < cut))]
        if not picks:
            continue
        values = {b.name: to_numpy(table.column(b.columns[0]).take(pa.array(picks))) for b in image_blocks}
        key_rows = table.select(list(keys)).take(pa.array(picks)).to_pylist() if keys else [{} for _ in picks]
        for j, i in enumerate(picks):
            row = {"keys": key_rows[j], "gradients": {n: v[j] for n, v in values.items()}}
            if ids[i] in wanted:
                found[ids[i]] = row
            if sample:
                sampled.append((int(ranks[i]), ids[i], row))
        sampled = sorted(sampled, key=lambda s: s[0])[:sample]
    return found, [(key, row) for _, key, row in sampled]


def input_column(schema: pa.Schema, block: GradientBlock, keys: Sequence[str]) -> str | None:
    """The input column that feeds this gradient: the one with the gradient's shape (by name where several do)."""
    size = int(np.prod(block.shape))
    fits = []
    for field in schema:
        if field.name in keys:
            continue
        kind = field.type
        if isinstance(kind, pa.FixedShapeTensorType) and int(np.prod(kind.shape)) == size:
            fits.append(field.name)
        elif pa.types.is_fixed_size_list(kind) and kind.list_size == size:
            fits.append(field.name)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            fits.append(field.name)
    named = [f for f in fits if f in block.name.split("__")]
    return (named or fits or [None])[0]


def stream_inputs(pattern: str, keys: Sequence[str], wanted: set[str], blocks) -> dict[str, dict[str, np.ndarray]]:
    """The input rows of the wanted keys (one pass over the input files, key and feature columns only)."""
    files = match_files(pattern).paths
    schema = open_parquet(files[0]).schema_arrow
    missing = [k for k in keys if k not in schema.names]
    if missing:
        raise InputError(f"--input {pattern!r} has no key column {missing[0]!r}, which joins it to the output")
    feeds = {b.name: input_column(schema, b, keys) for b in blocks}
    columns = list(dict.fromkeys(list(keys) + [c for c in feeds.values() if c]))
    found: dict[str, dict[str, np.ndarray]] = {}
    for path in files:
        for batch in open_parquet(path).iter_batches(batch_size=65536, columns=columns):
            table = pa.Table.from_batches([batch])
            ids = [_key_tuple(row, keys) for row in table.select(list(keys)).to_pylist()]
            picks = [i for i, k in enumerate(ids) if k in wanted]
            if not picks:
                continue
            taken = table.take(pa.array(picks))
            for name, column in feeds.items():
                if column is None:
                    continue
                values = to_numpy(taken.column(column))
                block = next(b for b in blocks if b.name == name)
                for j, i in enumerate(picks):
                    found.setdefault(ids[i], {})[name] = np.asarray(values[j], np.float64).reshape(block.shape)
    return found


# ---------------------------------------------------------------- sections


# A fixed anchor written in this file ("run", "rejected"); anchors of names from data come from slug().
_FIXED_ANCHOR = re.compile(r"[a-z][a-z0-9-]*")


def slug(name: str) -> str:
    """The anchor of a name from data: lowercase [a-z0-9-] and a short hash of the name, so two names never share one."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{text}-{digest}" if text else digest


def count_text(value) -> str:
    """A count from the marker or the summary, with thousands separators; anything else (a crafted file) as text."""
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


class Section(str):
    """A section's HTML, with its title and anchor for the page's nav."""

    title: str
    anchor: str


def section(title: str, body: str, anchor: str) -> Section:
    if not _FIXED_ANCHOR.fullmatch(anchor):  # a name from data that no caller slugged: never raw in an id
        anchor = slug(anchor)
    made = Section(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')
    made.title, made.anchor = title, anchor
    return made


def table_html(header: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if any(header) else ""
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{html.escape(cls)}">{head}<tbody>{body}</tbody></table>'


def run_section(prefix: str, marker: dict | None, metadata: dict[str, str], summary_source: str, problem=None) -> str:
    """`problem`: why the marker does not vouch for the output (corrupt, or a shard that differs), if it does not."""
    rows = []
    if problem:
        warning = f'<p class="warning">{html.escape(problem)} The page shows whatever shards are there.</p>'
    elif marker is None:
        warning = (
            f'<p class="warning">No {html.escape(prefix)}_SUCCESS marker: this output is incomplete (a job still '
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


def gradient_sections(summary: dict, blocks, saliency: dict[str, list[tuple[str, list[dict]]]]) -> list[Section]:
    parts = []
    for block in blocks:
        entry = summary["gradients"][block.name]
        body = [f"<p>{html.escape(count_text(entry['count']))} rows; shape {html.escape(str(tuple(block.shape)))}.</p>"]
        mean_abs = np.asarray(entry["mean_abs"], np.float64)
        if block.features is not None:
            labels = list(block.features)
            body.append(
                figure(
                    bars(labels, mean_abs.tolist(), f"{block.name}: mean |gradient| per feature", "mean |gradient|"),
                    f"{block.name}: feature importance, all rows",
                    "feature-importance",
                    {"gradient": block.name, "group": None, "features": labels, "mean_abs": mean_abs.tolist()},
                )
            )
            for group, g in list((entry.get("groups") or {}).items())[:12]:
                heights = np.asarray(g["mean_abs"], np.float64).tolist()
                body.append(
                    figure(
                        bars(labels, heights, f"{block.name}, {summary['group_column']} = {group}", "mean |gradient|"),
                        f"{block.name}: feature importance where {summary['group_column']} = {group} ({count_text(g['count'])} rows)",
                        "feature-importance",
                        {"gradient": block.name, "group": group, "features": labels, "mean_abs": heights},
                    )
                )
        elif is_image(block):
            plt = _matplotlib()
            fig, ax = plt.subplots(figsize=(3, 3))
            ax.imshow(heat(mean_abs), cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            body.append(figure(png(fig), f"{block.name}: mean |gradient| over all rows", "mean-saliency"))
            for title, rows in saliency.get(block.name, []):
                if rows:
                    body.append(
                        figure(
                            saliency_grid(rows, f"{block.name}: {title}"),
                            f"{block.name}: {title}",
                            "saliency",
                            [r["label"] for r in rows],
                        )
                    )
        elif mean_abs.size <= 64:
            labels = [str(i) for i in range(mean_abs.size)]
            body.append(
                figure(
                    bars(labels, mean_abs.ravel().tolist(), f"{block.name}: mean |gradient| per element", "mean |gradient|"),
                    f"{block.name}: mean |gradient| per element",
                    "element-importance",
                    {"gradient": block.name, "mean_abs": mean_abs.ravel().tolist()},
                )
            )
        body.append(
            figure(
                histogram(entry["norm_histogram"], f"{block.name}: per-row L2 norm", "L2 norm of the row's gradient"),
                f"{block.name}: histogram of per-row gradient norms",
                "norm-histogram",
                entry["norm_histogram"],
            )
        )
        top = entry.get("top_by_norm") or []
        if top:
            body.append("<h3>Largest gradients</h3>" + table_html(["norm", "row"], [(f"{t['norm']:.4g}", key_text(t["keys"])) for t in top[:10]]))
        parts.append(section(f"Gradients: {block.name}", "".join(body), slug(f"gradient-{block.name}")))
    if summary.get("top_by_loss"):
        rows = [(f"{t['loss']:.4g}", key_text(t["keys"])) for t in summary["top_by_loss"][:10]]
        parts.append(section("Largest losses", table_html(["loss", "row"], rows), "loss"))
    return parts


def rejected_section(prefix: str, complete: bool, option: str | None = None) -> str:
    """Rejected rows counted by stage and reason, streamed: of the rejected-rows output at `prefix`, or with
    `option`, of exactly the shards the marker at `prefix` lists under it (the main job's --rejected)."""
    reasons: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    if option is None and not output_shards(prefix, require_complete=False):
        return section("Rejected rows", f"<p>No rejected-rows output found at {html.escape(prefix)}.</p>", "rejected")
    try:
        columns = ["stage", "reason"]
        tables = iter_listed(prefix, option, columns) if option else iter_tables(prefix, columns, require_complete=complete)
        for table in tables:
            for stage, reason in zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()):
                reasons[(stage, reason)] += 1
                stages[stage] += 1
    except (IncompleteOutput, InputError):
        return section("Rejected rows", f"<p>No rejected-rows output found at {html.escape(prefix)}.</p>", "rejected")
    total = sum(stages.values())
    if not total:
        return section("Rejected rows", '<p class="rejected-total" data-count="0">No row was rejected.</p>', "rejected")
    rows = [(stage, reason, f"{n:,}") for (stage, reason), n in reasons.most_common(MAX_REASONS)]
    rest = total - sum(n for _, n in reasons.most_common(MAX_REASONS))
    if rest:
        rows.append(("", f"{len(reasons) - MAX_REASONS} other reasons", f"{rest:,}"))
    body = f'<p class="rejected-total" data-count="{total}">{total:,} rows rejected.</p>'
    body += figure(
        bars(list(stages), list(stages.values()), "rejected rows by stage", "rows"),
        "rejected rows by stage",
        "rejected-stages",
        dict(stages),
    )
    body += table_html(["stage", "reason", "rows"], rows, "reasons")
    return section("Rejected rows", body, "rejected")


def ranked_section(ranked: _Ranked, title: str, text: str, name: str, anchor: str | None = None) -> str:
    """`name` names the figure and the table (their class); `anchor`, the section (`name` where not given)."""
    if not ranked.rows:
        return ""
    body = f"<p>{html.escape(text)}</p><p>{ranked.rows:,} rows; mean {ranked.total / ranked.rows:.4g}; largest {ranked.largest:.4g}.</p>"
    body += figure(histogram(ranked.counts, f"|{ranked.column}|", f"|{ranked.column}|"), f"histogram of |{ranked.column}|", f"{name}-histogram", ranked.counts.tolist())
    rows = [(i + 1, f"{v:.4g}", key_text(k)) for i, (v, k) in enumerate(ranked.best)]
    body += table_html(["rank", f"|{ranked.column}|", "row"], rows, name)
    return section(title, body, anchor or name)


def influence_section(prefix: str, complete: bool, k: int) -> str:
    """Influence neighbours of the first queries: proponents and opponents, by rank (streamed; MAX_QUERIES at most)."""
    schema = open_parquet(output_shards(prefix, complete)[0]).schema_arrow
    train = [n for n in schema.names if n.startswith(TRAIN_PREFIX)]
    query = [n for n in schema.names if n not in INFLUENCE_COLUMNS and n not in train]
    queries: dict[str, list] = {}
    for table in iter_tables(prefix, require_complete=complete):
        for row in table.to_pylist():
            qid = key_text({n: row[n] for n in query})
            if qid not in queries and len(queries) >= MAX_QUERIES:
                continue
            if row["rank"] <= k:
                queries.setdefault(qid, []).append(row)
    body = [f"<p>Training rows that pushed each query's prediction toward (proponents) or away from it (opponents); the first {MAX_QUERIES} queries, top {k}.</p>"]
    for qid, rows in queries.items():
        rows.sort(key=lambda r: (r["kind"] != "proponent", r["rank"]))
        cells = [(r["kind"], r["rank"], f"{r['score']:.4g}", key_text({n[len(TRAIN_PREFIX):]: r[n] for n in train})) for r in rows]
        body.append(f"<h3>query {html.escape(qid)}</h3>" + table_html(["kind", "rank", "score", "training row"], cells, "influence"))
    return section("Influence neighbours", "".join(body), "influence")


def self_influence_section(prefix: str, complete: bool, top: int) -> str:
    schema = open_parquet(output_shards(prefix, complete)[0]).schema_arrow
    keys = [n for n in schema.names if n != "self_influence"]
    ranked = _Ranked("self_influence", keys, top)
    for table in iter_tables(prefix, require_complete=complete):
        ranked.add(table)
    return ranked_section(
        ranked,
        "Self-influence",
        "Each training row's influence on itself: the ranking people use to find mislabeled rows.",
        "self-influence",
    )


# The page runs no script and fetches nothing: only its own inline styles and its data: images.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}figcaption{font-size:.85em;color:#555}
img{max-width:100%}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
.warning{background:#fff3cd;border:1px solid #e0c36a;padding:.6em}nav a{margin-right:1em}
"""


def write_report(
    prefix: str,
    input_pattern: str | None = None,
    output: str | None = None,
    top: int = 6,
    sample: int = 6,
    seed: int = 0,
    influence: str | None = None,
    self_influence: str | None = None,
) -> str:
    """Write the page for the output at `prefix`; returns its path (`<prefix>-report.html` unless `output`)."""
    output = output or report_path(prefix)
    marker, problem = None, None
    try:
        marker = find_marker(prefix)
        if marker is not None:
            verify_output(prefix)  # every listed shard there, with its bytes and rows
    except CorruptMarker as err:
        problem = f"Corrupt marker: {err}."
    except OutputMismatch as err:
        problem = f"A shard differs from what the marker lists: {err}."
    complete = marker is not None and problem is None
    shards = output_shards(prefix, require_complete=False)
    if not shards:
        raise InputError(f"{prefix}: no output shards there ({prefix}-SSSSS-of-NNNNN.parquet)")
    schema = open_parquet(shards[0]).schema_arrow
    metadata = output_metadata(prefix, require_complete=False)
    parts = []
    if INFLUENCE_COLUMNS <= set(schema.names):  # an influence job's output
        parts.append(run_section(prefix, marker, metadata, "(influence output)", problem))
        parts.append(influence_section(prefix, complete, top))
        beside = self_influence or prefix + SELF_INFLUENCE_SUFFIX
        if output_shards(beside, require_complete=False):
            parts.append(self_influence_section(beside, complete, top * 3))
    elif "self_influence" in schema.names:
        parts.append(run_section(prefix, marker, metadata, "(self-influence output)", problem))
        parts.append(self_influence_section(prefix, complete, top * 3))
    else:
        parts += main_job_sections(prefix, schema, marker, metadata, input_pattern, top, sample, seed, problem)
        if influence:
            parts.append(influence_section(influence, find_marker(influence) is not None, top))
        if self_influence:
            parts.append(self_influence_section(self_influence, find_marker(self_influence) is not None, top * 3))
    title = f"beam-gradients report: {prefix}"
    nav = "".join(f'<a href="#{p.anchor}">{html.escape(p.title)}</a>' for p in parts if isinstance(p, Section))
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{''.join(parts)}</body></html>"
    )
    if "://" in output:  # beside a remote output (gs://...): through Beam's filesystems
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(output, mime_type="text/html") as fh:
            fh.write(page.encode())
        return output
    folder = os.path.dirname(output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(page)
    return output


def main_job_sections(prefix, schema, marker, metadata, input_pattern, top, sample, seed, problem=None) -> list[str]:
    complete = marker is not None and problem is None
    summary = read_summary(prefix)
    keys = [
        k
        for k in (summary or {}).get("key_columns") or _guess_keys(schema)
        if k in schema.names
    ]
    if summary is not None:
        source = f"{prefix}-summary.json, computed by the job"
        blocks = blocks_from_summary(summary)
    else:  # an output written before the job wrote summaries: the same combiner, streamed here
        blocks = blocks_from_schema(schema)
        source = "computed here from the output (no summary file)"
        loss = "loss" if "loss" in schema.names else None
        spec = AggregateSpec(tuple(blocks), tuple(keys), None, loss, 20)
        columns = list(dict.fromkeys(keys + [c for b in blocks for c in b.columns] + ([loss] if loss else [])))
        summary = summarize(iter_tables(prefix, columns, require_complete=False), spec)
    ranked = [_Ranked(c, keys, top * 3) for c in ranked_columns(schema.names)]
    classes = [_Classes(c) for c in CLASS_COLUMNS if c in schema.names]
    wanted_by_block = {}
    for block in blocks:
        if not is_image(block):
            continue
        entry = summary["gradients"][block.name]
        sets = {"top rows by gradient norm": [t["keys"] for t in entry["top_by_norm"][:top] if t["keys"]]}
        if summary.get("top_by_loss"):
            sets["top rows by loss"] = [t["keys"] for t in summary["top_by_loss"][:top] if t["keys"]]
        wanted_by_block[block.name] = sets
    wanted = {_key_tuple(k, keys) for sets in wanted_by_block.values() for rows in sets.values() for k in rows}
    found, sampled = stream_output(
        prefix, blocks, keys, wanted, sample if wanted_by_block else 0, seed, ranked + classes, complete
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
                key = _key_tuple(k, keys)
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
    parts += gradient_sections(summary, blocks, saliency)
    for r in ranked:
        title, text = ranked_text(r.column)
        anchor = None if r.column in RANKED_COLUMNS else slug(r.column)  # ig_delta__<head>: a head's name
        parts.append(ranked_section(r, title, text, r.column.replace("_", "-"), anchor))
    for c in classes:
        labels = [str(k) for k in sorted(c.counts)]
        heights = [c.counts[k] for k in sorted(c.counts)]
        what = "the predicted class" if c.column == "predicted_class" else "the top class of the top k"
        body = figure(bars(labels, heights, f"{c.column}: rows per class", "rows"), f"rows per class: {what}", "classes",
                      dict(zip(labels, heights)))
        parts.append(section(f"Classes: {c.column}", body, c.column.replace("_", "-")))
    if complete and "--rejected" in marker["outputs"]:  # exactly the rejected shards the marker lists
        parts.append(rejected_section(prefix, complete, "--rejected"))
    else:
        parts.append(rejected_section(prefix + REJECTED_SUFFIX, complete))
    return parts


def _guess_keys(schema: pa.Schema) -> list[str]:
    """Without a summary: the columns before the first gradient column are the key columns."""
    keys = []
    for name in schema.names:
        if name.startswith(("gradient", "prediction__", "norm__", "loss", "weight_")):
            break
        keys.append(name)
    return keys


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="beam-gradients report",
        description="Write one self-contained HTML page about a job's output (saliency maps, feature importance, "
        "norm histograms, rejected rows, influence).",
    )
    parser.add_argument("prefix", metavar="OUTPUT_PREFIX", help="The job's --output prefix.")
    parser.add_argument("--input", help="The job's input files (a glob), to show each row's input beside its heat map.")
    parser.add_argument("--output", help="The page to write (default: <OUTPUT_PREFIX>-report.html).")
    parser.add_argument("--top", type=int, default=6, help="Rows shown per ranking (default 6).")
    parser.add_argument("--sample", type=int, default=6, help="Rows in the random sample (default 6).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random sample (default 0).")
    parser.add_argument("--influence", help="An influence job's output prefix, to show its neighbours too.")
    parser.add_argument("--self_influence", help="A self-influence output prefix, to show its ranking too.")
    args = parser.parse_args(argv)
    try:
        check_prefix(args.prefix, "OUTPUT_PREFIX", _prefix_inside(args.prefix))
        path = write_report(
            args.prefix, args.input, args.output, args.top, args.sample, args.seed, args.influence, args.self_influence
        )
    except (InputError, OptionsError, OSError) as err:
        print(f"beam-gradients report: error: {err}", file=sys.stderr)
        return 2
    try:
        verify_output(args.prefix)
    except IncompleteOutput:
        print(f"beam-gradients report: warning: {args.prefix} has no _SUCCESS marker; the output is incomplete", file=sys.stderr)
    except InputError as err:  # a corrupt marker, or a shard that differs from it
        print(f"beam-gradients report: warning: {err}", file=sys.stderr)
    print(path)
    return 0


def _prefix_inside(folder: str) -> str:
    """The name of a complete output inside a folder (its `<name>_SUCCESS` marker), else the main job's usual one."""
    import glob

    markers = sorted(glob.glob(os.path.join(glob.escape(folder), "*_SUCCESS"))) if "://" not in folder else []
    names = [os.path.basename(m)[: -len(MARKER_SUFFIX)] for m in markers]
    return next((name for name in names if name), "gradients")


def write_demo_report(summary) -> str:
    """The demo's report, beside its output, with its inputs."""
    from pipeline.demo import DEMO_DIR

    prefix = os.path.join(DEMO_DIR, "out", "gradients")
    return write_report(prefix, os.path.join(DEMO_DIR, "data", "*.parquet"))
