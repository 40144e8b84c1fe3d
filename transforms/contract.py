"""Every name the jobs write that a reader must find again: suffixes, column prefixes, metadata keys.

Why one module: the main job, the influence job, the reader and the report each
spelled these themselves, and a name changed in one place would have left the
others looking for the old one. Everything here is part of the output format.

>>> summary_path("out/grads")
'out/grads-summary.json'
>>> metadata_key("spec")
'beam_gradients.spec'
"""

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
