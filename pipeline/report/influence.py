"""The influence job's pages: each query's neighbours (proponents, opponents) and the self-influence ranking.

Which column is a query key, a training key, the rank, the kind or the score is
read from the output's declared columns (`beam_gradients.columns`), never from names.
With the job's input files (`--input`), the rows' inputs are drawn beside their
scores: a training row's key `train__<key>` is the input's `<key>` (the influence
job keeps the same key columns on both sides), and `label_column` names the
column whose values caption them.
"""

from __future__ import annotations

import html
import json

from pipeline.reader import iter_tables, output_shards
from pipeline.report.gallery import inputs_or_note, strip
from pipeline.report.html import Section, figure, key_text, section, table_html
from pipeline.report.passes import Ranked, key_id
from pipeline.report.sections import ranked_section
from transforms.contract import (
    INFLUENCE_KIND,
    KEY,
    RANK,
    SCORE,
    SELF_INFLUENCE_KIND,
    TRAIN_KEY,
    TRAIN_PREFIX,
    columns_of_kind,
    declared_columns,
    metadata_key,
)
from transforms.io.files import InputError, open_parquet

MAX_QUERIES = 20
DRAWN_QUERIES = 8  # of those, the first whose inputs are drawn (each a figure); the rest as tables


def _declared(prefix: str, complete: bool) -> list[dict]:
    schema = open_parquet(output_shards(prefix, complete)[0]).schema_arrow
    entries = declared_columns(schema.metadata)
    if entries is None:
        raise InputError(f"{prefix}: its metadata does not declare its columns (beam_gradients.columns)")
    return entries


def _one(entries: list[dict], kind: str, prefix: str) -> str:
    found = columns_of_kind(entries, kind)
    if len(found) != 1:
        raise InputError(f"{prefix}: its metadata declares {len(found)} columns of kind {kind!r}, not one")
    return found[0]


def is_influence(entries) -> bool:
    return bool(columns_of_kind(entries, SCORE))


def is_self_influence(entries) -> bool:
    return bool(columns_of_kind(entries, SELF_INFLUENCE_KIND))


def _train_key(row: dict, train: list[str]) -> dict:
    """A training row's key as the input names it: `train__id` -> `id`."""
    return {n[len(TRAIN_PREFIX):]: row[n] for n in train}


def _label_text(label_column: str | None, found: dict) -> str:
    return f", {label_column} {found['label']}" if label_column and found.get("label") is not None else ""


def training_label_column(prefix: str, complete: bool) -> str | None:
    """The column holding the training rows' labels: the class or label column of the job that wrote the influence
    job's --train projections (its spec, in their metadata), where that is readable; else None."""
    from transforms.io.files import match_files

    try:
        metadata = open_parquet(output_shards(prefix, complete)[0]).schema_arrow.metadata or {}
        influence = json.loads(metadata.get(metadata_key("influence").encode(), b"{}"))
        pattern = influence["train"][0] if isinstance(influence.get("train"), list) else influence["train"]
        first = open_parquet(match_files(pattern).paths[0]).schema_arrow.metadata or {}
        spec = json.loads(first.get(metadata_key("spec").encode(), b"{}"))
    except (KeyError, IndexError, TypeError, ValueError, OSError, InputError):
        return None
    column = spec.get("class_column") or spec.get("label_column") if isinstance(spec, dict) else None
    return column if isinstance(column, str) else None


def most_self_influential(prefix: str, complete: bool, n: int = MAX_QUERIES) -> list[dict]:
    """The keys (as the input names them) of the `n` training rows of largest self-influence, largest first: the
    queries worth showing first where the queries are the training rows (the demo's mislabeled rows)."""
    entries = _declared(prefix, complete)
    train = columns_of_kind(entries, TRAIN_KEY)
    ranked = Ranked(_one(entries, SELF_INFLUENCE_KIND, prefix), train, n)
    for table in iter_tables(prefix, require_complete=complete):
        ranked.add(table)
    return [_train_key(k, train) for _, k in ranked.best]


def influence_section(prefix: str, complete: bool, k: int, input_pattern: str | None = None, label_column: str | None = None,
                      first: list[dict] | None = None) -> str:
    """Influence neighbours of MAX_QUERIES queries: proponents and opponents, by rank (streamed); the queries of
    keys `first` first (those that are queries), then the first read. With `input_pattern`, each query's input beside
    its neighbours' (only those rows are read)."""
    entries = _declared(prefix, complete)
    train, query = columns_of_kind(entries, TRAIN_KEY), columns_of_kind(entries, KEY)
    rank, kind, score = (_one(entries, c, prefix) for c in (RANK, INFLUENCE_KIND, SCORE))
    preferred = {key_id(keys, query): i for i, keys in enumerate((first or [])[:MAX_QUERIES])}  # by every character
    queries: dict[str, list] = {}
    query_keys: dict[str, dict] = {}
    others = 0  # queries kept that are not preferred: at most MAX_QUERIES
    deepest = 0  # the largest rank the job wrote: its --top_k
    for table in iter_tables(prefix, require_complete=complete):
        for row in table.to_pylist():
            deepest = max(deepest, row[rank])
            keys = {n: row[n] for n in query}
            qid = key_id(keys, query)
            if qid not in query_keys:
                if qid not in preferred and others >= MAX_QUERIES:
                    continue
                others += qid not in preferred
                query_keys[qid] = keys
            if row[rank] <= k:
                queries.setdefault(qid, []).append(row)
    order = sorted(queries, key=lambda q: preferred.get(q, len(preferred)))  # stable: the others in the order read
    queries = {q: queries[q] for q in order[:MAX_QUERIES]}
    names = [n[len(TRAIN_PREFIX):] for n in train]
    inputs, note = {}, ""
    if input_pattern and query and sorted(names) == sorted(query):
        wanted = {key_id(keys, query) for keys in query_keys.values()}
        wanted |= {key_id(_train_key(r, train), query) for rows in queries.values() for r in rows}
        inputs, note = inputs_or_note(input_pattern, query, wanted, label_column)
    which = (f"the {len(queries)} queries of largest self-influence first" if preferred and set(queries) & set(preferred)
             else f"the first {MAX_QUERIES} queries")
    body = [f"<p>Training rows of the largest scores (proponents: with projections of each row's loss gradient, a "
            f"step on them lowers the query's loss) and the most negative (opponents: it raises it); "
            f"{html.escape(which)}, top {min(k, deepest)} of each"
            + (f" (the influence job kept {deepest} of each: its --top_k)" if deepest < k else "") + ".</p>", note]
    drawn = False
    for n, (qid, rows) in enumerate(queries.items()):
        rows.sort(key=lambda r: (r[kind] != "proponent", r[rank]))
        cells = [(r[kind], r[rank], f"{r[score]:.4g}", key_text(_train_key(r, train))) for r in rows]
        body.append(f"<h3>query {html.escape(key_text(query_keys[qid]))}</h3>")
        if inputs and n < DRAWN_QUERIES:
            made = _neighbour_figure(query_keys[qid], rows, inputs, query, train, kind, rank, score, k, label_column)
            body.append(made)
            drawn = drawn or bool(made)
        body.append(table_html(["kind", "rank", "score", "training row"], cells, "influence"))
    if drawn:  # said only where an input could be drawn (an image, not a vector of features)
        body.insert(2, f"<p>The inputs of the first {DRAWN_QUERIES} of these queries and of their neighbours are drawn, each with its score.</p>")
    return section("Influence neighbours", "".join(body), "influence")


def _neighbour_figure(keys, rows, inputs, query, train, kind, rank, score, k, label_column) -> str:
    """The query's input, then its proponents on one line and its opponents on the next, each with its score."""
    shown_query = key_text(keys)
    found = inputs.get(key_id(keys, query), {})
    tiles = {"proponent": [], "opponent": []}
    for r in rows:
        other = inputs.get(key_id(_train_key(r, train), query), {})
        sign = "+" if r[kind] == "proponent" else "-"
        caption = f"{sign}{r[rank]} {key_text(_train_key(r, train))}\n{r[score]:.3g}{_label_text(label_column, other)}"
        tiles.setdefault(r[kind], []).append({"image": other.get("image"), "caption": caption})
    width = max(1, k, *(len(t) for t in tiles.values()))
    pad = lambda t: t + [{"image": None, "caption": ""}] * (width - len(t))
    first = [{"image": found.get("image"), "caption": f"query {shown_query}\n{_label_text(label_column, found)[2:]}".rstrip(), "edge": "#d62728"}]
    line = first + pad(tiles["proponent"]) + [{"image": None, "caption": ""}] + pad(tiles["opponent"])
    url = strip(line, f"query {shown_query}: proponents (top line), opponents (bottom line)", columns=width + 1)
    if url is None:
        return ""
    shown = [key_text(_train_key(r, train)) for r in rows]
    return figure(url, f"query {shown_query}: its input (red), its proponents and opponents with their scores", "influence-inputs",
                  {"query": shown_query, "rows": shown})


def self_influence_section(prefix: str, complete: bool, top: int, input_pattern: str | None = None,
                           label_column: str | None = None) -> str:
    entries = _declared(prefix, complete)
    train = columns_of_kind(entries, TRAIN_KEY)
    ranked = Ranked(_one(entries, SELF_INFLUENCE_KIND, prefix), train, top)
    for table in iter_tables(prefix, require_complete=complete):
        ranked.add(table)
    words = ("Each training row's score against itself (with tracin its squared projected gradient norm, with trak its "
             "leverage, at most 1): rows mislabeled or unlike the others rank high, so it is where to look for them.")
    made = ranked_section(ranked, "Self-influence", words, "self-influence")
    if not made or not input_pattern or not train:
        return made
    names = [n[len(TRAIN_PREFIX):] for n in train]
    best = [(v, _train_key(k, train)) for v, k in ranked.best]
    inputs, extra = inputs_or_note(input_pattern, names, {key_id(k, names) for _, k in best}, label_column)
    rows = []
    for i, (value, k) in enumerate(best):
        found = inputs.get(key_id(k, names), {})
        rows.append({"image": found.get("image"), "caption": f"#{i + 1} {key_text(k)}\n{value:.3g}{_label_text(label_column, found)}",
                     "keys": k, "label": found.get("label")})
    url = strip(rows, f"the {len(rows)} rows of largest self-influence", columns=min(len(rows), 10))
    if url:
        extra += figure(url, f"the inputs of the {len(rows)} rows of largest self-influence, with their scores"
                        + (f" and {label_column}" if label_column else ""), "self-influence-inputs", [key_text(r["keys"]) for r in rows])
    if label_column and any(r["label"] is not None for r in rows):  # this table in place of the one without labels
        made = ranked_section(ranked, "Self-influence", words, "self-influence", table=False)
        cells = [(i + 1, f"{v:.4g}", key_text(k), r["label"]) for i, ((v, k), r) in enumerate(zip(best, rows))]
        extra += table_html(["rank", "self-influence", "row", label_column], cells, "self-influence-labels")
    if not extra:
        return made
    body, end = made.rsplit("</section>", 1)
    grown = Section(body + extra + "</section>" + end)
    grown.title, grown.anchor = made.title, made.anchor
    return grown
