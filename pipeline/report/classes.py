"""Predictions and classes: rows per labelled vs predicted class (a confusion table), and per-class mean |attribution|.

Which column is what comes from the output's declarations, never from names:
- the labelled class is the column the job's spec names as `class_column` (the
  `--target class` column), read from the output where the job kept it
  (`--keep_columns`, declared kind `key`). It is not joined from `--input`: a join
  by key would hold every row's key in memory, and the page's memory is bounded.
- the predicted class is a declared `class` column (`--target predicted` or
  `top_k`: the first class), else the argmax of each declared `prediction` column
  with two or more classes (`--emit predictions`).
The per-class means group rows by the labelled class where there is one, else by
the predicted one. One streamed pass; what it keeps is a count per (label,
prediction) pair and a sum of |attribution| per class and gradient output, for at
most MAX_CLASSES classes.
"""

from __future__ import annotations

import collections
import html

import numpy as np
import pyarrow as pa

from pipeline.reader import iter_tables, to_numpy
from pipeline.report.describe import parse_spec, spec_words
from pipeline.report.figures import _matplotlib, heat, png
from pipeline.report.html import Section, count_text, figure, section, table_html
from pipeline.report.passes import is_image
from transforms.contract import KEY, columns_of_kind, metadata_key

MAX_CLASSES = 50  # classes shown (and summed); rows of further classes are counted as "other classes"
MAX_MAP_VALUES = 4096  # per-class maps larger than this are drawn but not repeated in data-values
CLASS, PREDICTION = "class", "prediction"  # the engine's kinds of a class target's column and of a prediction


def spec_of(metadata: dict[str, str]) -> dict:
    """The job's spec (`beam_gradients.spec`) as a dict; {} where absent or not an object."""
    return parse_spec(metadata.get(metadata_key("spec"))) or {}


def input_label_column(metadata: dict[str, str]) -> str | None:
    """The input column that holds each row's class or label (the spec's `class_column`, else `label_column`), to
    caption inputs read from --input; None where the job had neither."""
    spec = spec_of(metadata)
    column = spec.get("class_column") or spec.get("label_column")
    return column if isinstance(column, str) else None


def labelled_column(metadata: dict[str, str], entries) -> str | None:
    """The spec's `class_column`, where the output kept it (a declared key column)."""
    column = spec_of(metadata).get("class_column")
    return column if isinstance(column, str) and column in columns_of_kind(entries, KEY) else None


def predicted_columns(entries, schema: pa.Schema) -> list[str]:
    """The declared class columns, else the declared prediction columns with two or more classes."""
    chosen = columns_of_kind(entries, CLASS)
    if chosen:
        return chosen[:1]
    found = []
    for column in columns_of_kind(entries, PREDICTION):
        shape = tuple(getattr(schema.field(column).type, "shape", ()))
        if len(shape) == 1 and shape[0] >= 2:
            found.append(column)
    return found


def _predicted(table: pa.Table, column: str) -> np.ndarray:
    values = np.asarray(to_numpy(table.column(column)))
    if values.ndim == 1:  # a class column
        return values.astype(np.int64)
    if values.dtype.kind in "iu":  # top k classes: the first
        return values.reshape(len(values), -1)[:, 0].astype(np.int64)
    return values.reshape(len(values), -1).argmax(axis=1)  # a prediction's scores


class ClassPass:
    """Counts per (labelled, predicted) class per prediction column, and per class sums of |attribution| per block."""

    def __init__(self, label: str | None, predicted: list[str], blocks):
        self.label, self.predicted, self.blocks = label, predicted, list(blocks)
        self.pairs = {p: collections.Counter() for p in predicted}
        self.labels: set = set()  # the labelled classes counted in `pairs`: at most MAX_CLASSES
        self.unpaired = 0  # rows (per prediction column) of further labelled classes, not in `pairs`
        self.sums: dict[str, dict[int, np.ndarray]] = {b.name: {} for b in self.blocks}
        self.counts: collections.Counter = collections.Counter()  # rows per class (of the grouping)
        self.other = 0  # rows of classes beyond MAX_CLASSES, not summed

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(([self.label] if self.label else []) + self.predicted + [c for b in self.blocks for c in b.columns]))

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        labels = np.asarray(table.column(self.label).to_pylist(), dtype=object) if self.label else None
        predictions = {p: _predicted(table, p) for p in self.predicted}
        named = [_class(v) for v in labels] if labels is not None else None
        if named is not None:
            for a in dict.fromkeys(named):
                if len(self.labels) < MAX_CLASSES:
                    self.labels.add(a)
            kept = [a in self.labels for a in named]
            self.unpaired += kept.count(False)
            for p, values in predictions.items():
                self.pairs[p].update((a, b) for a, b, k in zip(named, values.tolist(), kept) if k)
        group = named if named is not None else predictions[self.predicted[0]].tolist()
        rows: dict = {}  # class -> its rows in this table, for the first MAX_CLASSES classes (one pass, no per-class scan)
        for i, name in enumerate(group):
            if name in self.counts or len(self.counts) < MAX_CLASSES:
                self.counts[name] += 1
                rows.setdefault(name, []).append(i)
            else:
                self.other += 1
        for name, index in rows.items():
            taken = table.take(pa.array(index))
            for block in self.blocks:
                part = np.abs(block.values(taken)).sum(axis=0, dtype=np.float64)
                sums = self.sums[block.name]
                sums[name] = sums.get(name, 0) + part

    def means(self, block) -> dict:
        """class -> mean |attribution| per element (in the block's shape)."""
        return {c: (s / self.counts[c]).reshape(block.shape) for c, s in sorted(self.sums[block.name].items(), key=_order)}


def _class(value):
    """A label as the page shows and groups it: an integer class where it is one."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)) or isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, str) else str(value)


def _order(item):
    value = item[0]
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))


def confusion_table(pairs: collections.Counter, label: str, predicted: str) -> str:
    """Rows per labelled class (table rows) and predicted class (table columns), with each label's total."""
    labels = sorted({a for a, _ in pairs}, key=lambda v: _order((v,)))[:MAX_CLASSES]
    predictions = sorted({b for _, b in pairs} | {v for v in labels if isinstance(v, int)}, key=lambda v: _order((v,)))[:MAX_CLASSES]
    rows = [[a] + [pairs.get((a, b), 0) for b in predictions] + [sum(n for (x, _), n in pairs.items() if x == a)] for a in labels]
    header = [f"{label} (rows) / {predicted} (columns)"] + [str(b) for b in predictions] + ["rows"]
    total = sum(pairs.values())
    agree = sum(n for (a, b), n in pairs.items() if a == b)
    text = f"<p>{count_text(total)} rows; the prediction is the labelled class for {count_text(agree)} ({agree / max(total, 1):.1%}).</p>"
    return text + table_html(header, rows, "confusion")


def class_maps(means: dict, name: str, by: str, quantity: str = "attribution", per_line: int = 8) -> str:
    """One mean |quantity| map per class (`per_line` a line), on one colour scale (a colour bar), so classes compare."""
    plt = _matplotlib()
    maps = {c: heat(m) for c, m in means.items()}
    high = max(float(m.max()) for m in maps.values()) or 1.0
    columns = min(per_line, len(maps))
    lines = -(-len(maps) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(1.9 * columns + 0.8, 2.1 * lines + 0.3), squeeze=False)
    shown = None
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (c, m) in zip(axes.ravel(), maps.items()):
        shown = ax.imshow(m, cmap="inferno", vmin=0, vmax=high)
        ax.set_title(f"{by} {c}", fontsize=8)
    fig.colorbar(shown, ax=list(axes.ravel()), shrink=0.8, label=f"mean |{quantity}|")
    fig.suptitle(f"{name}: mean |{quantity}| per class", fontsize=9)
    return png(fig)


def class_bars(means: dict, features, name: str, by: str, quantity: str = "attribution") -> str:
    """Per-feature mean |quantity|, one bar per class side by side."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(features) * max(1, len(means)) / 2 + 2), 3))
    width = 0.8 / max(len(means), 1)
    for i, (c, m) in enumerate(means.items()):
        ax.bar(np.arange(len(features)) + i * width - 0.4 + width / 2, np.ravel(m), width, label=f"{by} {c}")
    ax.set_xticks(range(len(features)), list(features), rotation=45 if len(features) > 6 else 0)
    ax.set_ylabel(f"mean |{quantity}|")
    ax.legend(fontsize=7)
    ax.set_title(f"{name}: mean |{quantity}| per feature and class")
    return png(fig)


def job_means(summary: dict | None, label: str | None, block) -> tuple[dict, dict] | None:
    """(class -> mean |attribution|, class -> rows) from the job's summary, where the job grouped by the class column
    (`--group_column` the class column: its combiner summed per class, so the report need not read the gradients)."""
    if not summary or label is None or summary.get("group_column") != label:
        return None
    groups = (summary.get("gradients", {}).get(block.name) or {}).get("groups")
    if not groups or len(groups) > MAX_CLASSES:
        return None
    named = {g: int(g) if g.lstrip("-").isdigit() else g for g in groups}  # the summary's group names are text
    order = sorted(groups, key=lambda g: _order((named[g],)))
    means = {named[g]: np.asarray(groups[g]["mean_abs"], np.float64).reshape(block.shape) for g in order}
    return means, {named[g]: groups[g]["count"] for g in order}


def class_sections(prefix: str, schema: pa.Schema, entries, metadata: dict[str, str], blocks, complete: bool,
                   summary: dict | None = None) -> list[Section]:
    """The confusion table(s) and the per-class maps or bars; nothing where the output has no class to go by.
    `summary`: the job's aggregates, whose per-group means serve where it grouped by the class column."""
    label = labelled_column(metadata, entries)
    predicted = predicted_columns(entries, schema)
    if label is None and not predicted:
        return []
    drawn = [b for b in blocks if b.features is not None or is_image(b)]
    from_job = {b.name: job_means(summary, label, b) for b in drawn}
    classes = ClassPass(label, predicted, [b for b in drawn if from_job[b.name] is None])
    for table in iter_tables(prefix, classes.columns, require_complete=complete):
        classes.add(table)
    body = []
    spec = spec_of(metadata)
    quantity = spec_words(spec or None).quantity
    wanted = spec.get("class_column")
    if label is None and isinstance(wanted, str):
        body.append(f"<p>No confusion table: the job did not keep its class column {html.escape(wanted)} in the output "
                    "(name it in --keep_columns to see rows per labelled and predicted class).</p>")
    for p in predicted if label else ():
        body.append(f"<h3>Labelled ({html.escape(label)}) vs predicted ({html.escape(p)})</h3>" + confusion_table(classes.pairs[p], label, p))
    if label and predicted and classes.unpaired:
        body.append(f"<p>{count_text(classes.unpaired)} rows of labelled classes beyond the first {MAX_CLASSES} are left out of the table.</p>")
    by = label or predicted[0]
    if classes.other:
        body.append(f"<p>{count_text(classes.other)} rows of classes beyond the first {MAX_CLASSES} are left out of the per-class means.</p>")
    for block in drawn:
        means, counts = from_job[block.name] or (classes.means(block), classes.counts)
        if not means:
            continue
        values = {"gradient": block.name, "by": by, "classes": [str(c) for c in means], "rows": [counts[c] for c in means],
                  "source": "job" if from_job[block.name] else "report"}
        if block.features is not None:
            values.update(features=list(block.features), mean_abs=[np.ravel(m).tolist() for m in means.values()])
            url = class_bars(means, block.features, block.name, by, quantity)
        else:
            if heat(next(iter(means.values()))).size <= MAX_MAP_VALUES:
                values["maps"] = [heat(m).tolist() for m in means.values()]
            url = class_maps(means, block.name, by, quantity)
        caption = f"{block.name}: mean |{quantity}| per class of {by} (one colour scale)"
        body.append(figure(url, caption, "class-means", values))
    if not body:
        return []
    return [section("Predictions and classes", "".join(body), "predictions-and-classes")]

