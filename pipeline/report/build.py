"""Build the report page for an output, and `beam-gradients report OUTPUT_PREFIX`: which page kind, from the declared columns."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Sequence

from pipeline.options import OptionsError, check_prefix
from pipeline.outputs import CorruptMarker, OutputClash, _real, marker_path
from pipeline.reader import (
    IncompleteOutput,
    OutputMismatch,
    find_marker,
    output_columns,
    output_metadata,
    output_shards,
    verify_output,
)
from pipeline.report.html import page
from pipeline.report.classes import input_label_column
from pipeline.report.influence import (
    influence_section,
    is_influence,
    is_self_influence,
    most_self_influential,
    self_influence_section,
    training_label_column,
)
from pipeline.report.main import main_job_sections
from pipeline.report.sections import run_section
from transforms.contract import MARKER_SUFFIX, SECONDARY_SUFFIXES, SELF_INFLUENCE_SUFFIX, report_path, summary_path
from transforms.io.files import InputError, match_files, open_parquet, output_files


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
    _check_page_path(output, prefix, input_pattern, influence, self_influence)
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
    entries = output_columns(prefix, require_complete=False)
    parts = []
    if is_influence(entries):  # an influence job's output
        parts.append(run_section(prefix, marker, metadata, "(influence output)", problem))
        label = training_label_column(prefix, complete)
        beside = self_influence or prefix + SELF_INFLUENCE_SUFFIX
        if complete and not self_influence:  # its marker says: a rerun without self influence leaves the old shards
            has_self = find_marker(beside) is not None
        else:  # one asked for by name must be there (and is refused below where its marker is missing)
            has_self = bool(output_shards(beside, require_complete=False))
        first = most_self_influential(beside, complete) if has_self else None
        parts.append(influence_section(prefix, complete, top, input_pattern, label, first))
        if has_self:
            parts.append(self_influence_section(beside, complete, top, input_pattern, label))
    elif is_self_influence(entries):
        parts.append(run_section(prefix, marker, metadata, "(self-influence output)", problem))
        parts.append(self_influence_section(prefix, complete, top, input_pattern, training_label_column(prefix, complete)))
    else:
        parts += main_job_sections(prefix, schema, marker, metadata, input_pattern, top, sample, seed, problem)
        label = input_label_column(metadata)  # the main job's, whose input rows the influence job scored
        if influence:
            first = most_self_influential(self_influence, find_marker(self_influence) is not None) if self_influence else None
            parts.append(influence_section(influence, find_marker(influence) is not None, top, input_pattern, label, first))
        if self_influence:
            parts.append(self_influence_section(self_influence, find_marker(self_influence) is not None, top, input_pattern, label))
    text = page(f"beam-gradients report: {prefix}", parts)
    if "://" in output:  # beside a remote output (gs://...): through Beam's filesystems
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(output, mime_type="text/html") as fh:
            fh.write(text.encode())
        return output
    folder = os.path.dirname(output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(text)
    return output


def _check_page_path(output: str, prefix: str, input_pattern: str | None, *others: str | None) -> None:
    """OutputClash where the page would overwrite a file the report reads: a shard, marker or summary of an output
    it shows (or of one beside it: rejected rows, self influence), or an input file."""
    read = []
    for shown in filter(None, (prefix, *others)):
        for p in (shown, *(shown + suffix for suffix in SECONDARY_SUFFIXES)):
            read += [*output_files(p), marker_path(p), summary_path(p)]
    if input_pattern:
        with contextlib.suppress(InputError):  # an input that matches nothing is the input section's to say
            read += match_files(input_pattern, "--input").paths
    page = _real(output)
    for path in read:
        if _real(path) == page:
            raise OutputClash(f"the report page {output} would replace {path}, which the report reads; give --output "
                              "another page path")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="beam-gradients report",
        description="Write one self-contained HTML page about a job's output (saliency maps, feature importance, "
        "norm histograms, rejected rows, influence).",
    )
    parser.add_argument("prefix", metavar="OUTPUT_PREFIX", help="The job's --output prefix.")
    parser.add_argument("--input", help="The job's input files (a glob), to show each row's input beside its heat map.")
    parser.add_argument("--output", help="The page to write (default: <OUTPUT_PREFIX>-report.html).")
    parser.add_argument(
        "--top",
        type=int,
        default=6,
        help="N rows in every top list and tile grid: the saliency grids, the largest norms and losses, each ranking "
        "and each influence query's proponents and opponents (default 6; the job's summary keeps its --top_rows, 20 "
        "by default, of the largest norms and losses).",
    )
    parser.add_argument("--sample", type=int, default=6, help="Rows in the random sample (default 6).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random sample (default 0).")
    parser.add_argument("--influence", help="An influence job's output prefix, to show its neighbours too.")
    parser.add_argument("--self_influence", help="A self-influence output prefix, to show its ranking too.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    args = parser.parse_args(argv)
    try:
        check_prefix(args.prefix, "OUTPUT_PREFIX", _prefix_inside(args.prefix), written=False)
        path = write_report(
            args.prefix, args.input, args.output, args.top, args.sample, args.seed, args.influence, args.self_influence
        )
    except (InputError, OptionsError, OSError) as err:
        if args.debug:
            traceback.print_exc()
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


def write_demo_report(prefix: str) -> str:
    """The demo's report: its main output `prefix` with its inputs, and its influence and self-influence beside it."""
    from pipeline.demo import DATA_PATTERN, INFLUENCE, SELF_INFLUENCE

    return write_report(prefix, DATA_PATTERN, influence=INFLUENCE, self_influence=SELF_INFLUENCE)
