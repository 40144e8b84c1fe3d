"""Which Parquet files an input names, and what their footers say: matching, opening, schemas, row counts.

Footers are read in parallel and only once: remote footers are slow one by one.
Also where a job's own shards are found again, and the probe that an output can be written.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import re
import uuid
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import error_line
from transforms.errors import SettingError, setting

SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".parquet"
# A shard's name or path as SHARD_TEMPLATE makes it, and the prefix it was written under.
SHARD_NAME = re.compile(r"^(?P<prefix>.+)-\d{5}-of-\d{5}" + re.escape(SUFFIX) + "$")


class InputError(SettingError):
    """Input files that cannot be read; the message names the file (a template: see transforms.errors)."""


@dataclasses.dataclass(frozen=True)
class InputFiles:
    """The files an input pattern matches: those to read, and the zero-byte ones skipped."""

    paths: list[str]
    empty: list[str]


def match_files(pattern: str, option: str | None = None) -> InputFiles:
    """Every file `pattern` matches (local or remote, Beam's filesystems), sorted.

    Errors name `pattern` as `option` (the caller's words), else as the `input` setting.

    Zero-byte files are what a failed writer leaves behind: they are skipped
    (and reported), not read; a file with content that is not Parquet stays an error.
    """
    where = ("{option}" if option is not None else setting("input")) + " {pattern!r}"
    given, pattern = pattern, files_pattern(pattern)
    # Beam's local match finds nothing for a relative pattern whose first part holds a wildcard (`*.parquet`);
    # through `./` it does, and the paths come back as the user wrote them
    dotted = "://" not in pattern and not os.path.isabs(pattern) and any(c in pattern.split("/")[0] for c in "*?[")
    try:
        result = FileSystems.match(["./" + pattern if dotted else pattern])[0]
    except Exception as err:  # BeamIOError and friends: the filesystem says why
        raise InputError(where + ": cannot list files ({err})", option=option, pattern=pattern, err=err) from err
    found = sorted(((m.path[2:] if dotted else m.path), m.size_in_bytes) for m in result.metadata_list)
    if not found:
        literal = "://" not in given and any(c in given for c in "*?[") and os.path.exists(given)
        hint = " ('[', '*' and '?' are wildcards there: write a literal '[' as '[[]')" if literal else ""
        if not hint and _is_output_prefix(given):
            hint = f" (it is an output's prefix: its shards are {given}-*{SUFFIX})"
        raise InputError(where + " matches no file" + hint, option=option, pattern=pattern)
    paths = [path for path, size in found if size]
    empty = [path for path, size in found if not size]
    if not paths:
        raise InputError(
            where + ": every file it matches is empty (0 bytes): {empty}",
            option=option, pattern=pattern, empty=", ".join(empty[:3]),
        )
    return InputFiles(paths, empty)


def _is_output_prefix(pattern: str) -> bool:
    """A job's output prefix given where its files are meant (`--train out/proj`): it has shards."""
    if any(c in pattern for c in "*?["):
        return False
    try:
        return bool(FileSystems.match([pattern + "-*-of-*" + SUFFIX])[0].metadata_list)
    except Exception:  # a hint only: no listing, no hint
        return False


def files_pattern(pattern: str) -> str:
    """What an input pattern reads: a folder (with or without the trailing slash) its Parquet files, else itself."""
    return pattern.rstrip("/") + "/*" + SUFFIX if _is_folder(pattern) else pattern


def _is_folder(pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return False
    if "://" not in pattern:
        return os.path.isdir(pattern)
    return pattern.endswith("/")


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file opened for streaming reads: column chunks are read in buffered pieces."""
    source = path if "://" not in path else FileSystems.open(path)
    try:
        return pq.ParquetFile(source, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise InputError(f"{path} is not a readable Parquet file ({err})") from err


def read_footers(paths: Sequence[str]) -> list[pq.FileMetaData]:
    """Every file's footer, read in parallel (remote footers are slow one by one)."""
    if not paths:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return list(pool.map(lambda p: open_parquet(p).metadata, paths))


def read_schemas(paths: Sequence[str], footers: Sequence[pq.FileMetaData] | None = None) -> list[pa.Schema]:
    """Every file's Arrow schema, from its footer alone; a column named twice is refused here."""
    schemas = [meta.schema.to_arrow_schema() for meta in (footers or read_footers(paths))]
    for path, schema in zip(paths, schemas):
        twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
        if twice:
            raise InputError(
                f"{path} has the column {twice[0]!r} twice; Parquet readers cannot tell the two apart "
                "(rewrite the file with unique column names)"
            )
    return schemas


def parquet_rows(paths: Sequence[str]) -> int:
    """Rows in these Parquet files, from their footers: a count that needs no runner's metrics."""
    return sum(meta.num_rows for meta in read_footers(paths))


def check_same_columns(
    paths: Sequence[str],
    schemas: Sequence[pa.Schema],
    columns: Sequence[str],
    rows: Sequence[int] | None = None,
    planned: int = 0,
) -> None:
    """Every file with rows must hold the columns the job reads, with the types of the file it planned by (`planned`).

    A file without rows (`rows`) is never decoded, so its types do not matter: pandas writes an empty object column
    as type null.
    """
    first, reference = paths[planned], schemas[planned]
    for i, (path, schema) in enumerate(zip(paths, schemas)):
        if i == planned or (rows is not None and not rows[i]):
            continue
        for column in columns:
            if column not in schema.names:
                raise InputError(
                    f"{path} has no column {column!r}, which {first} has; its columns are: {', '.join(schema.names)}"
                )
            theirs, ours = schema.field(column).type, reference.field(column).type
            if theirs != ours:
                raise InputError(
                    f"{path} disagrees with {first}: column {column!r} is {theirs} there, {ours} in {first}"
                )


def output_files(prefix: str) -> list[str]:
    """The shards under `prefix`: what a finished job wrote."""
    return files_in_folder(prefix + SHARD_TEMPLATE.replace("S", "?").replace("N", "?") + SUFFIX)


def files_in_folder(pattern: str) -> list[str]:
    """The files a pattern with wildcards in its last part only matches, sorted; none where its folder is missing.

    A local one is globbed in its folder alone: Beam's LocalFileSystem walks the whole tree under the folder
    first, seconds for an output directly under /tmp. The folder's own name is taken literally.
    """
    if "://" in pattern:
        try:
            return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        except Exception:  # nothing there yet
            return []
    folder, name = os.path.split(pattern)
    found = glob.glob(os.path.join(glob.escape(folder), name), include_hidden=True)
    return sorted(path for path in found if os.path.isfile(path))


def check_writable(prefix: str, option: str) -> None:
    """Write and delete a probe beside `prefix`, so an output that cannot be written fails before any compute."""
    folder, _ = FileSystems.split(prefix)
    probe = FileSystems.join(folder, f".beam-gradients-probe-{uuid.uuid4().hex}")
    try:
        FileSystems.mkdirs(folder)
    except Exception:  # it exists already (or the filesystem has no folders); the probe tells
        pass
    try:
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
    except Exception as err:
        raise InputError("{option} {prefix!r}: cannot write there ({why})", option=option, prefix=prefix, why=error_line(err)) from err
