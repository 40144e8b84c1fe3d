"""The command line's own settings, declared once per job: the main job's (beyond the engine's and those of
`transforms/job_settings.py`) and `beam-gradients influence`'s. options.py builds the flags from them."""

from __future__ import annotations

from transforms.gradients.settings import Setting, job_setting as _job


# Where the main job reads and writes (listed first in --help).
RUN_IO = (
    _job("input", str, None, "Parquet file or glob to read (local path or gs://...)."),
    _job("output", str, None, "Output prefix: shards are <output>-SSSSS-of-NNNNN.parquet."),
    _job("model", str, None, "Keras model: .keras, .h5 or SavedModel directory; local path or fsspec URL."),
)
# How the main job runs, after the gradient settings.
RUN_REST = (
    _job("read_batch_rows", int, None, "Rows per Parquet record batch read (default: about 32 MiB).", minimum=1),
    _job("rejected", str, None, "Prefix of the rejected-rows output (default: <output>_rejected)."),
    _job(
        "max_rejected_fraction",
        float,
        None,
        "Exit with status 3 (after writing everything) when more than this fraction of rows is rejected.",
        minimum=0,
        maximum=1,
    ),
    _job(
        "num_shards",
        int,
        None,
        "Shards per output (default: the runner decides); a fixed count costs a shuffle.",
        minimum=0,
        range_text="0 (the runner decides) or more",
    ),
    _job(
        "group_column",
        str,
        None,
        "Also aggregate per value of this column (a label or a slice) in <output>-summary.json; "
        "it is kept in the output like a {keep_columns} column.",
    ),
    _job("top_rows", int, 20, "Rows listed in <output>-summary.json's top-by-norm and top-by-loss.", minimum=0),
    _job(
        "vocab",
        str,
        None,
        "With {wrt} layer: a vocabulary file (one token a line, or a .json id->token map) naming the token ids "
        "in <output>-summary.json's token aggregates.",
    ),
    _job("quiet", bool, False, "No progress lines while the job runs."),
    _job("config", str, None, "YAML file of options; flags on the command line override it."),
    _job("debug", bool, False, "Show tracebacks on errors."),
    _job(
        "demo",
        bool,
        False,
        "Make a small image task and a CNN trained on it under ./demo, then run integrated gradients, "
        "weight projections, influence and the report on them.",
    ),
)


def influence_settings() -> tuple[Setting, ...]:
    """`beam-gradients influence`'s own settings (its rankings and scores are named by transforms/)."""
    from transforms.influence.steps import KINDS
    from transforms.influence.scores import SCORES

    return (
        _job("train", str, (), "Training rows' projections: a file or glob per checkpoint (comma-separated or repeated).", items=True),
        _job("query", str, (), "Query rows' projections: a file or glob per checkpoint, paired with {train} in order.", items=True),
        _job("top_k", int, 20, "Training rows kept per query and kind.", minimum=1),
        _job("score", str, "tracin", "tracin (inner product), cosine or trak.", choices=tuple(SCORES)),
        _job("damping", float, 0.0, "TRAK's λ: (ΦᵀΦ + λI)⁻¹.", minimum=0),
        _job("checkpoint_weights", str, (), "One weight per checkpoint (its learning rate), comma-separated; default 1.", items=True),
        _job("kinds", str, (), f"Which rankings to write, comma-separated: {', '.join(KINDS)} (default both).", items=True),
        _job("self_influence", bool, False, "Also write each training row's score against itself."),
        _job("self_influence_output", str, None, "Prefix of the self-influence output (default <output>_self_influence)."),
        _job(
            "allow_incomplete",
            bool,
            False,
            "Read {train} and {query} files that no _SUCCESS marker lists (an output still being written, "
            "cut short, or not written by the main job).",
        ),
        _job(
            "query_memory_mb",
            int,
            1024,
            "Memory per worker for the queries, a block's scores and the top-k; more queries are split "
            "into groups, each a branch of the job.",
            minimum=1,
        ),
    )


# The main job's settings that the influence command shares, with the same meaning for its own inputs and
# output: name -> its help there.
INFLUENCE_SHARED = {
    "output": "Output prefix: shards are <output>-SSSSS-of-NNNNN.parquet, one row per (query, kind, rank).",
    "keep_columns": "Key columns of both inputs (comma-separated); default: every integer, string, boolean, "
    "date, timestamp or binary column.",
    "read_batch_rows": "Training rows per block read (default: about 32 MiB of projections).",
    "config": "YAML file of options; flags on the command line override it.",
    "debug": "Show tracebacks on errors.",
}
