"""The report for text: rows as tokens coloured by their token score, and the dataset-wide token table.

Chosen from the declared columns (transforms/contract.py), never from names: each column of
kind `token_scores` (one per head) is tied to the `mask` and `tokens` columns of the same
layer by their declared `input`. A row is drawn as one span per position, its background on
a diverging scale centred at 0 (blue below, red above; one scale per section, the largest
|score| of the rows shown, so colours compare across rows), padding marked. The rows are the
top rows by the sum of |score| over positions and a seeded sample (`--top`, `--sample`,
`--seed`, as for saliency maps). The token table is the summary's `tokens` (per token id: mean
score and count, per group with `--group_column`), named by the vocabulary the job was given
(`--vocab`); computed here from the output where the summary has none. Every token string is
escaped; colours are inline styles computed here, never text from data.
"""

from __future__ import annotations

import dataclasses
import html
import json

import numpy as np
import pyarrow as pa

from pipeline.reader import iter_tables, to_numpy
from pipeline.report.describe import Words
from pipeline.report.sections import norm_histogram
from pipeline.report.html import Section, key_text, section, slug
from pipeline.report.passes import key_id, sample_rank
from transforms.aggregates import AggregatesFn, AggregateSpec, TokenBlock

TOKEN_SCORES, TOKENS, MASK = "token_scores", "tokens", "mask"  # the engine's kinds (wrt layer)
TABLE_ROWS = 20  # tokens listed at each end of a token table (highest and lowest mean score)
MAX_GROUPS_SHOWN = 12
NEGATIVE, POSITIVE = (33, 102, 172), (178, 24, 43)  # the ends of the diverging scale (ColorBrewer RdBu)


@dataclasses.dataclass(frozen=True)
class TokenView:
    """One token-scores column and the columns that say which token sits at each position and which are padding."""

    scores: str
    mask: str
    tokens: str | None  # None where the job could not name one integer input at the layer's positions
    layer: str
    head: str | None
    gradient: str | None  # the gradient output at the layer for the same head (its norm histogram is in the summary)


def token_views(entries) -> list[TokenView]:
    """The declared token-scores columns, each with its layer's mask and tokens columns (by the declared `input`)."""
    by_kind: dict[tuple, str] = {}
    for entry in entries or ():
        if entry["kind"] in (MASK, TOKENS):
            by_kind.setdefault((entry["kind"], entry["input"]), entry["column"])
        if entry["kind"] == "gradient":
            by_kind.setdefault(("gradient", entry["input"], entry["head"]), entry["output"] or entry["column"])
    return [
        TokenView(e["column"], by_kind[(MASK, e["input"])], by_kind.get((TOKENS, e["input"])), e["input"], e["head"],
                  by_kind.get(("gradient", e["input"], e["head"])))
        for e in entries or ()
        if e["kind"] == TOKEN_SCORES and (MASK, e["input"]) in by_kind
    ]


def token_layer_outputs(entries) -> set[str]:
    """The gradient outputs at a layer with token scores: positions x features, drawn as tokens, not as an image."""
    layers = {v.layer for v in token_views(entries)}
    return {e["output"] or e["column"] for e in entries or () if e["kind"] == "gradient" and e["input"] in layers}


def colour(value: float, scale: float) -> str:
    """The background of a score: white at 0, to red at +scale and blue at -scale (clipped beyond).

    >>> colour(0.0, 1.0), colour(1.0, 1.0), colour(-2.0, 1.0)
    ('#ffffff', '#b2182b', '#2166ac')
    """
    t = float(np.clip(value / scale, -1.0, 1.0)) if scale > 0 else 0.0
    end = POSITIVE if t >= 0 else NEGATIVE
    return "#" + "".join(f"{round(255 + (c - 255) * abs(t)):02x}" for c in end)


def _token_label(token_id, names: dict[int, str]) -> str:
    if token_id is None:
        return "?"
    name = names.get(int(token_id))
    return name if name is not None else str(int(token_id))


def row_html(label: str, scores: np.ndarray, mask: np.ndarray, ids, names: dict[int, str], scale: float) -> str:
    """One row: a span per position with its token (escaped), the score in its title. Padding is marked with a
    dashed border, uncoloured where its score is zero, coloured where the model used it (a model that drops the
    mask on the way: its padding holds part of the attribution)."""
    spans = []
    for position, (score, real) in enumerate(zip(scores, mask)):
        token = _token_label(ids[position] if ids is not None else None, names) if ids is not None else f"#{position}"
        if not real and score == 0:
            spans.append(f'<span class="token pad" title="padding (position {position})" style="color:#999;'
                         f'border:1px dashed #bbb;padding:0 .2em;margin:1px">{html.escape(token)}</span>')
            continue
        where = f"position {position}" if real else f"position {position}, padding the model used"
        spans.append(
            f'<span class="token{"" if real else " pad"}" title="{html.escape(f"{token} ({where}): {score:.4g}")}" '
            f'style="background:{colour(score, scale)};{"" if real else "border:1px dashed #bbb;"}padding:0 .2em;'
            f'margin:1px">{html.escape(token)}</span>'
        )
    total = float(np.abs(scores).sum())
    values = html.escape(json.dumps({"row": label, "abs_sum": total}), quote=True)
    return (f"<div class=\"token-row\" data-values='{values}' style=\"margin:.3em 0;line-height:1.8\">"
            f'<span class="row-label" style="color:#555;margin-right:.6em">{html.escape(label)} '
            f"(sum |score| {total:.4g})</span>{''.join(spans)}</div>")


def legend_html(scale: float) -> str:
    """The scale, as coloured spans from -scale to +scale."""
    steps = np.linspace(-scale, scale, 9)
    cells = "".join(f'<span style="background:{colour(v, scale)};padding:0 .6em;margin:0">{v:.3g}</span>' for v in steps)
    return (f'<p class="token-legend">token score (blue below 0, red above; clipped at ±{scale:.3g}; '
            f'dashed: padding, coloured where the model used it): {cells}</p>')


class _RowPicks:
    """The top rows by sum of |score| and a seeded sample, with what drawing them needs, over streamed tables."""

    def __init__(self, view: TokenView, keys, top: int, sample: int, seed: int):
        self.view, self.keys, self.top, self.sample, self.seed = view, list(keys), top, sample, seed
        self.best: list[tuple] = []  # (-sum, tie, row)
        self.sampled: list[tuple] = []  # (rank, tie, row)
        self.position = 0

    def add(self, table: pa.Table) -> None:
        scores = to_numpy(table.column(self.view.scores)).reshape(table.num_rows, -1)
        mask = to_numpy(table.column(self.view.mask)).reshape(table.num_rows, -1)
        ids = to_numpy(table.column(self.view.tokens)).reshape(table.num_rows, -1) if self.view.tokens else None
        key_rows = table.select(self.keys).to_pylist() if self.keys else [{} for _ in range(table.num_rows)]
        ties = [key_id(k, self.keys) if self.keys else json.dumps(["row", self.position + i]) for i, k in enumerate(key_rows)]
        self.position += table.num_rows
        sums = np.abs(scores.astype(np.float64)).sum(axis=1)
        order = np.argsort(-sums, kind="stable")[: self.top]

        def row(i):
            return {"keys": key_rows[i], "scores": scores[i], "mask": mask[i], "ids": None if ids is None else ids[i]}

        self.best = sorted(self.best + [(-float(sums[i]), ties[i], row(i)) for i in order], key=lambda e: e[:2])[: self.top]
        if self.sample:
            ranks = [(sample_rank(t, self.seed), t, i) for i, t in enumerate(ties)]
            picked = sorted(ranks)[: self.sample]
            self.sampled = sorted(self.sampled + [(r, t, row(i)) for r, t, i in picked], key=lambda e: e[:2])[: self.sample]


def _label(row: dict) -> str:
    return key_text(row["keys"]) if row["keys"] else "(no key columns kept)"


def _names(summary_tokens: dict | None) -> dict[int, str]:
    """Token id -> string, from the summary's token table (the job's --vocab); {} where it named none."""
    entries = (summary_tokens or {}).get("tokens") or []
    return {int(e["id"]): str(e["token"]) for e in entries if isinstance(e, dict) and e.get("token") is not None
            and isinstance(e.get("id"), int)}


def token_table_html(entries: list, names: dict[int, str], caption: str) -> str:
    """The highest and lowest tokens by mean score: token, id, mean, count (each row's numbers in data-values)."""
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("mean"), (int, float))]
    ranked = sorted(entries, key=lambda e: (-e["mean"], e.get("id", 0)))
    shown = ranked if len(ranked) <= 2 * TABLE_ROWS else ranked[:TABLE_ROWS] + ranked[-TABLE_ROWS:]
    rows = []
    for i, e in enumerate(shown):
        if len(ranked) > 2 * TABLE_ROWS and i == TABLE_ROWS:
            rows.append(f'<tr><td colspan="4">… {len(ranked) - 2 * TABLE_ROWS:,} tokens between …</td></tr>')
        token = e.get("token") if e.get("token") is not None else names.get(e.get("id"), "")
        values = html.escape(json.dumps({"id": e.get("id"), "mean": e["mean"], "count": e.get("count")}), quote=True)
        rows.append(f"<tr data-values='{values}'><td>{html.escape(str(token))}</td><td>{html.escape(str(e.get('id')))}</td>"
                    f"<td>{e['mean']:.4g}</td><td>{html.escape(str(e.get('count')))}</td></tr>")
    return (f"<h3>{html.escape(caption)}</h3><table class=\"token-table\"><thead><tr><th>token</th><th>id</th>"
            f"<th>mean score</th><th>count</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def text_sections(prefix: str, entries, summary: dict | None, keys, top: int, sample: int, seed: int,
                  complete: bool, words: Words) -> list[Section]:
    """One section per token-scores column: the top rows and a sample drawn as tokens, the token table, and the
    layer gradient's norm histogram in the run's `words`."""
    views = token_views(entries)
    if not views:
        return []
    keys = list(keys)
    picks = [_RowPicks(v, keys, top, sample, seed) for v in views]
    missing = [v for v in views if v.tokens and v.scores not in ((summary or {}).get("tokens") or {})]
    combiner, acc = None, None
    if missing:  # an output whose summary has no token table: the job's combiner, streamed here
        combiner = AggregatesFn(AggregateSpec((), tuple(keys), token_blocks=tuple(TokenBlock(v.scores, v.tokens, v.mask)
                                                                                for v in missing)))
        acc = combiner.create_accumulator()
    columns = list(dict.fromkeys(keys + [c for v in views for c in (v.scores, v.mask, v.tokens) if c]))
    for table in iter_tables(prefix, columns, require_complete=complete):
        for p in picks:
            p.add(table)
        if combiner is not None:
            acc = combiner.add_input(acc, table)
    tokens = dict((summary or {}).get("tokens") or {})
    if combiner is not None:
        tokens.update(combiner.extract_output(acc)["tokens"])
    parts = []
    for view, p in zip(views, picks):
        table = tokens.get(view.scores)
        names = _names(table)
        rows = [("top", r) for _, _, r in p.best] + [("sample", r) for _, _, r in p.sampled]
        shown = [np.abs(r["scores"][r["mask"] != 0]) for _, r in rows]
        scale = max((float(s.max()) for s in shown if s.size), default=0.0)
        body = [f"<p>Token scores at layer {html.escape(view.layer)}"
                + (f", head {html.escape(view.head)}" if view.head else "")
                + f" (column {html.escape(view.scores)}): each position's attribution reduced over its features.</p>",
                legend_html(scale or 1.0)]
        body.append("<h3>Top rows by sum of |token score|</h3>")
        body += [row_html(_label(r), r["scores"], r["mask"], r["ids"], names, scale) for kind, r in rows if kind == "top"]
        if sample:
            body.append(f"<h3>A random sample (seed {seed})</h3>")
            body += [row_html(_label(r), r["scores"], r["mask"], r["ids"], names, scale) for kind, r in rows if kind == "sample"]
        if table is not None:
            body.append(token_table_html(table.get("tokens") or [], names, "Tokens by mean score, all rows"))
            group_column = (summary or {}).get("group_column")
            for group, entries_ in list((table.get("groups") or {}).items())[:MAX_GROUPS_SHOWN]:
                body.append(token_table_html(entries_ or [], names, f"Tokens by mean score where {group_column} = {group}"))
        elif not view.tokens:
            body.append("<p>No token table: the job could not name the tokens at this layer's positions "
                        "(it needs one integer model input of the layer's length).</p>")
        gradient = ((summary or {}).get("gradients") or {}).get(view.gradient)
        if isinstance(gradient, dict) and ("norm_sketch" in gradient or gradient.get("norm_histogram")):
            body.append(norm_histogram(gradient, view.gradient, words))
        parts.append(section(f"Tokens: {view.scores}", "".join(body), slug(f"tokens-{view.scores}")))
    return parts
