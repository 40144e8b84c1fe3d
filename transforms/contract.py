"""Every name the jobs write that a reader must find again: suffixes, column prefixes, metadata keys.

Why one module: the main job, the influence job, the reader and the report each
spelled these themselves, and a name changed in one place would have left the
others looking for the old one. Everything here is part of the output format.

>>> summary_path("out/grads")
'out/grads-summary.json'
>>> metadata_key("spec")
'beam_gradients.spec'
"""

import json

# Beside an output prefix `<output>`:
MARKER_SUFFIX = "_SUCCESS"  # `<output>_SUCCESS`: the marker, written last, vouches for what it lists
# Not "-rejected": `<output>-rejected-00000-of-00001.parquet` would match the output's own shard pattern
# `<output>-*-of-NNNNN.parquet`, which Beam's sink deletes as it finalizes.
REJECTED_SUFFIX = "_rejected"  # `<output>_rejected-SSSSS-of-NNNNN.parquet`: rows not written, with why
SELF_INFLUENCE_SUFFIX = "_self_influence"  # the influence job's per-training-row self influence
SUMMARY_SUFFIX = "-summary.json"  # the main job's dataset-wide aggregates
REPORT_SUFFIX = "-report.html"  # the report page written beside an output
# Outputs whose marker is their main output's (`<output>_rejected` -> `<output>_SUCCESS`).
SECONDARY_SUFFIXES = (REJECTED_SUFFIX, SELF_INFLUENCE_SUFFIX)

# Columns of the influence job's outputs.
TRAIN_PREFIX = "train__"  # a training row's key column `k`, as `train__k`
SELF_INFLUENCE_COLUMN = "self_influence"

# Parquet file metadata: what produced a file.
METADATA_PREFIX = "beam_gradients."


def metadata_key(name: str) -> str:
    """`beam_gradients.<name>`: version, model_path, model_sha256, spec, batch_size, weights, influence."""
    return METADATA_PREFIX + name


def marker_path(prefix: str) -> str:
    return prefix + MARKER_SUFFIX


def summary_path(prefix: str) -> str:
    return prefix + SUMMARY_SUFFIX


def report_path(prefix: str) -> str:
    return prefix + REPORT_SUFFIX


# `beam_gradients.columns`: what each column of an output is, declared by the job that wrote it,
# so readers know a column's kind without parsing its name. A JSON list, in the schema's order, of
# {"column", "kind", "output", "head", "input", "feature"}: `output` the engine output the column is
# filled from, `head` its model output (where the engine declares one), `input` its model input,
# `feature` the input column of a stacked scalar feature (None where they do not apply).
COLUMNS = "columns"
# Kinds of the columns that are not engine outputs (those carry the engine's own kind: gradient, norm, ...).
KEY = "key"  # a key column the user kept, unchanged
TRAIN_KEY = "train_key"  # the influence job's training-row key, `train__<key>`
RANK, INFLUENCE_KIND, SCORE = "rank", "influence_kind", "score"  # the influence job's columns
SELF_INFLUENCE_KIND = "self_influence"  # the self-influence output's value column
GRADIENT = "gradient"  # the engine's kind of an input gradient
# The rejected-rows output: the key columns, then these.
REJECTED_COLUMNS = ("stage", "reason", "source_file")


def column_entry(column: str, kind: str, output=None, head=None, input=None, feature=None) -> dict:
    """One column's declaration (see COLUMNS)."""
    return {"column": column, "kind": kind, "output": output, "head": head, "input": input, "feature": feature}


def columns_metadata(entries) -> dict[str, str]:
    """The metadata item that declares `entries` (column_entry dicts).

    >>> columns_metadata([column_entry("id", KEY)])
    {'beam_gradients.columns': '[{"column": "id", "kind": "key", "output": null, "head": null, "input": null, "feature": null}]'}
    """
    return {metadata_key(COLUMNS): json.dumps(list(entries))}


def declared_columns(metadata) -> list[dict] | None:
    """The column declarations in a file's metadata (bytes or text keys), or None where it has none (or they are not a list)."""
    metadata = metadata or {}
    raw = metadata.get(metadata_key(COLUMNS)) or metadata.get(metadata_key(COLUMNS).encode())
    if raw is None:
        return None
    try:
        entries = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entries, list):
        return None
    return [column_entry(**{k: e.get(k) for k in ("column", "kind", "output", "head", "input", "feature")})
            for e in entries if isinstance(e, dict) and isinstance(e.get("column"), str) and isinstance(e.get("kind"), str)]


def columns_of_kind(entries, *kinds: str) -> list[str]:
    """The names of the declared columns of these kinds, in the schema's order."""
    return [e["column"] for e in entries or () if e["kind"] in kinds]
