"""The influence job's pages: each query's neighbours (proponents, opponents) and the self-influence ranking.

Which column is a query key, a training key, the rank, the kind or the score is
read from the output's declared columns (`beam_gradients.columns`), never from names.
"""

from __future__ import annotations

import html

from pipeline.reader import iter_tables, output_shards
from pipeline.report.html import key_text, section, table_html
from pipeline.report.passes import Ranked
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
)
from transforms.io.files import InputError, open_parquet

MAX_QUERIES = 20


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


def influence_section(prefix: str, complete: bool, k: int) -> str:
    """Influence neighbours of the first queries: proponents and opponents, by rank (streamed; MAX_QUERIES at most)."""
    entries = _declared(prefix, complete)
    train, query = columns_of_kind(entries, TRAIN_KEY), columns_of_kind(entries, KEY)
    rank, kind, score = (_one(entries, c, prefix) for c in (RANK, INFLUENCE_KIND, SCORE))
    queries: dict[str, list] = {}
    for table in iter_tables(prefix, require_complete=complete):
        for row in table.to_pylist():
            qid = key_text({n: row[n] for n in query})
            if qid not in queries and len(queries) >= MAX_QUERIES:
                continue
            if row[rank] <= k:
                queries.setdefault(qid, []).append(row)
    body = [f"<p>Training rows that pushed each query's prediction toward (proponents) or away from it (opponents); the first {MAX_QUERIES} queries, top {k}.</p>"]
    for qid, rows in queries.items():
        rows.sort(key=lambda r: (r[kind] != "proponent", r[rank]))
        cells = [(r[kind], r[rank], f"{r[score]:.4g}", key_text({n[len(TRAIN_PREFIX):]: r[n] for n in train})) for r in rows]
        body.append(f"<h3>query {html.escape(qid)}</h3>" + table_html(["kind", "rank", "score", "training row"], cells, "influence"))
    return section("Influence neighbours", "".join(body), "influence")


def self_influence_section(prefix: str, complete: bool, top: int) -> str:
    entries = _declared(prefix, complete)
    ranked = Ranked(_one(entries, SELF_INFLUENCE_KIND, prefix), columns_of_kind(entries, TRAIN_KEY), top)
    for table in iter_tables(prefix, require_complete=complete):
        ranked.add(table)
    return ranked_section(
        ranked,
        "Self-influence",
        "Each training row's influence on itself: the ranking people use to find mislabeled rows.",
        "self-influence",
    )
