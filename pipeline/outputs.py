"""Staged outputs: a job's shards appear under their prefixes only once the whole job is done.

Why: a rerun must never erase a good output before the new one is complete.
Every prefix is written under a staging name beside it (a hidden folder
`.<name>.staging-<run>`); when the job has finished and its rows add up, the
new shards are moved into place, then the earlier run's leftover shards go, and
last a `<prefix>_SUCCESS` marker is written (as Hadoop and Spark do) holding the
counts and the shard lists. A run that dies or fails at any point before that
leaves the earlier output, and its marker, as they were.

Readers know a complete output by its marker: `read_marker(prefix)` returns it,
or None while the output is absent or being replaced (CorruptMarker where it is
not a marker this module wrote). The marker lists every shard by its name in
the marker's own folder, with its rows and bytes: readers trust nothing else.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
import uuid
from typing import Mapping, Sequence

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms.contract import MARKER_SUFFIX, marker_path
from transforms import __version__, error_line
from transforms.io.files import SUFFIX, InputError, files_pattern, output_files, parquet_rows, read_footers

MARKER = MARKER_SUFFIX
STAGING = ".staging-"


class OutputClash(InputError):
    """Two output prefixes whose shard names overlap: one sink would delete the other's files."""


class CorruptMarker(InputError):
    """A `_SUCCESS` marker that is there but is not one a job wrote: bad JSON, the wrong shape, or an unsafe entry."""



def read_marker(prefix: str) -> dict | None:
    """The `_SUCCESS` marker of a complete output (counts, shard lists), or None where there is none.

    A marker that is there but cannot be parsed, or has the wrong shape, raises CorruptMarker
    (one line naming the file): it is not the same thing as an output still being written.

    >>> read_marker("out/grads")  # doctest: +SKIP
    {'rows_in': 3000, 'rows_out': 2990, 'rows_rejected': 10, 'outputs': {...}, 'shards': {...}, ...}
    """
    path = marker_path(prefix)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            text = fh.read()
    except OSError as err:
        raise InputError(f"{path}: cannot read the marker ({error_line(err)})") from err
    try:
        marker = json.loads(text.decode())
    except ValueError as err:  # UnicodeDecodeError included
        raise CorruptMarker(f"{path}: corrupt marker, not JSON ({error_line(err)}); rerun the job that wrote it") from err
    problem = _shape_problem(marker)
    if problem:
        raise CorruptMarker(f"{path}: corrupt marker, {problem}; rerun the job that wrote it")
    return marker


def _shape_problem(marker) -> str | None:
    """What is wrong with a parsed marker's shape, or None: outputs {name: [file, ...]}, shards, files."""
    if not isinstance(marker, dict):
        return f"a JSON {type(marker).__name__}, not an object"
    outputs = marker.get("outputs")
    if not isinstance(outputs, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) and p for p in v) for v in outputs.values()
    ):
        return "its 'outputs' is not a mapping of names to lists of files"
    shards = marker.get("shards", {})
    if not isinstance(shards, dict) or not all(
        isinstance(v, dict) and all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool) for k in ("rows", "bytes"))
        for v in shards.values()
    ):
        return "its 'shards' is not a mapping of files to their rows and bytes"
    files = marker.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return "its 'files' is not a mapping of names to files"
    return None


def require_marker(prefix: str) -> dict:
    """The marker of a complete output, or an error saying the output is not complete, or its marker corrupt
    (for schedulers' checks)."""
    try:
        marker = read_marker(prefix)
    except InputError as err:
        raise RuntimeError(str(err)) from err
    if marker is None:
        raise RuntimeError(f"{prefix}: no {MARKER} marker, so the output is not complete")
    return marker


def marker_entry(entry: str, folder: str, marker_file: str) -> str:
    """A file a marker lists -> its path, refusing anything outside the marker's folder.

    Entries are names in the folder (`g-00000-of-00001.parquet`); markers written before
    that hold absolute paths, read only where they point into the folder itself.
    """
    if "://" in entry or os.path.isabs(entry):
        parent, name = FileSystems.split(entry)
        if name and _absolute(parent).rstrip("/") == folder.rstrip("/"):
            return FileSystems.join(folder, name)
        raise CorruptMarker(f"{marker_file}: lists {entry!r}, outside the output's folder {folder}; refused")
    if "/" in entry or "\\" in entry or entry in ("", ".", ".."):
        raise CorruptMarker(f"{marker_file}: lists {entry!r}, not a file name in the output's folder {folder}; refused")
    return FileSystems.join(folder, entry)


def output_folder(prefix: str) -> str:
    """The folder of a prefix, absolute (local) or a full URL."""
    return FileSystems.split(_absolute(prefix))[0]


def _shard_regex(prefix: str) -> re.Pattern:
    """What Beam's sink deletes at finalize for `prefix`: `<prefix>-*-of-NNNNN.parquet`, any shard count."""
    return _glob_regex(prefix, "-*-of-?????" + SUFFIX)


def _glob_regex(literal: str, wildcards: str) -> re.Pattern:
    """`literal` taken as written (a folder may hold `[`), then the glob `wildcards` as Beam's match reads it."""
    source = FileSystem.translate_pattern(wildcards)
    return re.compile("(?ms)" + re.escape(literal) + (source[len("(?ms)") :] if source.startswith("(?ms)") else source))


def _pattern_regex(pattern: str) -> re.Pattern:
    """An input pattern as the files it matches, absolute: where only its last part holds wildcards, its folder with
    links resolved (as `_real` spells files), else from the working folder."""
    pattern = files_pattern(pattern)
    if "://" in pattern:
        return _glob_regex("", pattern)
    folder, last = os.path.split(pattern)
    if not any(c in folder for c in "*?["):
        return _glob_regex(os.path.join(os.path.realpath(folder or "."), ""), last)
    return _glob_regex("" if os.path.isabs(pattern) else os.path.join(os.getcwd(), ""), pattern)


def check_no_clash(prefixes: Mapping[str, str]) -> None:
    """Refuse, at planning, any two prefixes where one's shards would match the other's pattern.

    Beam's file sink deletes every file matching `<prefix>-*-of-NNNNN.parquet` as it
    finalizes, so `--rejected out/g-rejected` beside `--output out/g` loses the
    rejected rows without a word. `prefixes` maps an option name to its prefix. Prefixes are compared as the
    files they name (`out/g` and `out/../out/g` are one prefix), and the messages show them as given.
    """
    items = list(prefixes.items())
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1 :]:
            ra, rb = _real(a), _real(b)
            if ra == rb or _shard_regex(ra).match(_first_shard(rb)) or _shard_regex(rb).match(_first_shard(ra)):
                raise OutputClash(
                    f"{name_a} {a!r} and {name_b} {b!r} overlap: the shards of one match the other's "
                    f"pattern <prefix>-*-of-NNNNN{SUFFIX}, so writing one would delete the other; "
                    "give prefixes where neither is the other followed by '-'"
                )
    if items:
        name_a, a = items[0]
        for name_b, b in items[1:]:
            if output_folder(_real(b)) != output_folder(_real(a)):
                raise OutputClash(
                    f"{name_b} {b!r} must sit in the folder of {name_a} {a!r} ({output_folder(a)}): "
                    "the output's marker vouches only for files of its own folder"
                )


def _real(path: str) -> str:
    """One spelling per file for comparing: the full URL (remote), the absolute path with links resolved (local)."""
    return path if "://" in path else os.path.realpath(path)


def check_inputs_untouched(
    prefixes: Mapping[str, str], inputs: Mapping[str, Sequence[str]], files: Sequence[tuple[str, str]] = ()
) -> None:
    """Refuse, at planning, any file the job would write, move or delete that is a file it reads.

    What a job touches, per output prefix (option -> prefix, the first one holding the
    marker): its shards and any leftover shard of an earlier run (`<prefix>-*-of-NNNNN.parquet`),
    its staging folders (`.<name>.staging-*`), the `<prefix>_SUCCESS` marker; and the single
    `files` ((option, path): summary, report), with their staging folders. `inputs` maps an
    option to the files (or folders: a SavedModel) it reads. OutputClash, one line naming both.
    """
    read = [(option, _real(path)) for option, paths in inputs.items() for path in paths if path]
    touched = []  # (option, what it writes, test)
    for i, (option, prefix) in enumerate(prefixes.items()):
        real = _real(prefix)
        folder, name = FileSystems.split(real) if "://" in real else os.path.split(real)
        touched.append((option, prefix, _shard_regex(real).match))
        touched.append((option, prefix, _staging_test(folder, name)))
        if i == 0:
            touched.append((option, marker_path(prefix), marker_path(real).__eq__))
    for option, path in files:
        real = _real(path)
        folder, name = FileSystems.split(real) if "://" in real else os.path.split(real)
        touched.append((option, path, real.__eq__))
        touched.append((option, path, _staging_test(folder, name)))
    for in_option, path in read:
        for out_option, target, test in touched:
            inside = _real(target).startswith(path.rstrip("/") + "/")  # an output inside a folder it reads
            if test(path) or inside:
                raise OutputClash(
                    f"{out_option} {target!r} would overwrite or delete {in_option} file {path}: a job never writes, "
                    f"moves or deletes a file it reads; give {out_option} another prefix"
                )


def check_pattern_untouched(
    prefixes: Mapping[str, str], patterns: Mapping[str, str | None], files: Sequence[tuple[str, str]] = ()
) -> None:
    """Refuse, at planning, an input pattern that would match a file the job writes, though none is there yet: the
    same command run again would read this run's output as its input. `patterns` maps an option to its pattern;
    `prefixes` and `files` are as check_inputs_untouched takes them."""
    written = [(option, _first_shard(prefix)) for option, prefix in prefixes.items()]
    written += [(option, marker_path(prefix)) for option, prefix in list(prefixes.items())[:1]] + list(files)
    for in_option, pattern in patterns.items():
        if not pattern:
            continue
        match = _pattern_regex(pattern).match
        for out_option, path in written:
            if match(_real(path)):
                raise OutputClash(
                    f"{in_option} {pattern!r} matches {path}, which {out_option} writes: the next run would read "
                    f"this run's output as its input; give {out_option} a prefix the pattern does not match"
                )


def _staging_test(folder: str, name: str):
    start = (folder.rstrip("/") + "/" if "://" in folder else os.path.join(folder, "")) + f".{name}{STAGING}"
    return lambda path: path.startswith(start)


def _first_shard(prefix: str) -> str:
    return f"{prefix}-00000-of-00001{SUFFIX}"


def shard_entries(paths: Sequence[str]) -> dict[str, dict[str, int]]:
    """name -> {"rows", "bytes"} of each file, as a marker lists it: rows from the footer, bytes from the listing.

    (No checksum: it would read every byte of the output again.)
    """
    sizes = _sizes(paths)
    return {
        FileSystems.split(path)[1]: {"rows": footer.num_rows, "bytes": sizes[path]}
        for path, footer in zip(paths, read_footers(paths))
    }


def _sizes(paths: Sequence[str]) -> dict[str, int]:
    """path -> bytes, from the filesystem's listing (no file is read)."""
    if not paths:
        return {}
    results = FileSystems.match(list(paths))
    return {path: result.metadata_list[0].size_in_bytes for path, result in zip(paths, results)}


def _absolute(path: str) -> str:
    """One spelling per file: a relative glob matches relative paths, while FileSystems.split makes them absolute."""
    return path if "://" in path else os.path.abspath(path)


def _remove_folders(pattern: str) -> None:
    """Remove every folder `pattern` matches (a staging folder, or a glob of them), local or remote."""
    if "://" not in pattern:
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
        return
    try:  # an object store: the "folders" are their objects
        files = [m.path for m in FileSystems.match([pattern.rstrip("/") + "/**"])[0].metadata_list]
    except Exception:  # nothing there
        files = []
    if files:
        FileSystems.delete(files)


class StagedOutputs:
    """The staging names of a job's output prefixes, and the commit that moves them into place.

    >>> staged = StagedOutputs({"--output": "out/g", "--rejected": "out/g_rejected"})
    >>> staged.staging["--output"]  # doctest: +ELLIPSIS
    '.../out/.g.staging-.../g'
    """

    def __init__(self, prefixes: Mapping[str, str], run_id: str | None = None, files: Mapping[str, str] | None = None):
        """`files`: single named files (e.g. {"summary": "out/g-summary.json"}), staged and moved the same way."""
        self.prefixes = dict(prefixes)
        self.files = dict(files or {})
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.staging = {}
        self._folders = {}
        for option, path in {**self.prefixes, **self.files}.items():
            folder, name = FileSystems.split(path)
            staging_folder = FileSystems.join(folder, f".{name}{STAGING}{self.run_id}")
            self._folders[option] = staging_folder
            self.staging[option] = FileSystems.join(staging_folder, name)

    def staged_files(self, option: str) -> list[str]:
        return output_files(self.staging[option])

    def count_rows(self) -> dict[str, int]:
        """Rows in each staged output, from the Parquet footers alone: no runner's counters needed."""
        return {option: parquet_rows(self.staged_files(option)) for option in self.prefixes}

    def commit(self, marker: dict) -> dict[str, list[str]]:
        """Move every staged shard into place, drop the earlier run's extra shards, write the marker.

        The earlier marker is removed first and the new one written last (whole, by a rename),
        so a commit cut short leaves no marker vouching for a mix of two runs. The marker names
        each shard within its folder, with its rows (from its footer) and its bytes.
        """
        first = self.prefixes[next(iter(self.prefixes))]
        if FileSystems.exists(marker_path(first)):
            FileSystems.delete([marker_path(first)])
        placed: dict[str, list[str]] = {}
        listed: dict[str, list[str]] = {}
        shards: dict[str, dict[str, int]] = {}
        for option, prefix in self.prefixes.items():
            staged = self.staged_files(option)
            folder, _ = FileSystems.split(prefix)
            names = [FileSystems.split(path)[1] for path in staged]
            targets = [FileSystems.join(folder, name) for name in names]
            shards.update(shard_entries(staged))
            old = {_absolute(p) for p in output_files(prefix)}
            if staged:
                FileSystems.rename(staged, targets)
            leftovers = sorted(old - {_absolute(p) for p in targets})
            if leftovers:
                FileSystems.delete(leftovers)
            placed[option] = targets
            listed[option] = names
        for name, path in self.files.items():
            if FileSystems.exists(path):
                FileSystems.delete([path])
            if FileSystems.exists(self.staging[name]):
                FileSystems.rename([self.staging[name]], [path])
        files = {name: FileSystems.split(path)[1] for name, path in self.files.items() if FileSystems.exists(path)}
        body = dict(
            marker,
            outputs=listed,
            shards=shards,
            files=files,
            version=__version__,
            finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        # Written whole under the staging folder, then renamed: no reader sees half a marker.
        written = FileSystems.join(self._folders[next(iter(self.prefixes))], MARKER)
        with FileSystems.create(written) as fh:
            fh.write(json.dumps(body, indent=2, sort_keys=True).encode())
        FileSystems.rename([written], [marker_path(first)])
        self.discard()
        self._remove_stale()
        return placed

    def discard(self) -> None:
        """Remove this run's staging folders (after a commit, or after a failure)."""
        for folder in self._folders.values():
            try:
                _remove_folders(folder)
            except Exception as err:  # leaving a hidden folder behind must not hide the job's own result
                print(f"beam-gradients: warning: could not remove {folder} ({error_line(err)})")

    def _remove_stale(self) -> None:
        """Staging folders that killed runs left beside the same prefixes."""
        for prefix in [*self.prefixes.values(), *self.files.values()]:
            folder, name = FileSystems.split(prefix)
            _remove_folders(FileSystems.join(folder, f".{name}{STAGING}*"))
