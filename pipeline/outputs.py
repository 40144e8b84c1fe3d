"""Staged outputs: a job's shards appear under their prefixes only once the whole job is done.

Why: a rerun must never erase a good output before the new one is complete.
Every prefix is written under a staging name beside it (a hidden folder
`.<name>.staging-<run>`); when the job has finished and its rows add up, the
new shards are moved into place, then the earlier run's leftover shards go, and
last a `<prefix>_SUCCESS` marker is written (as Hadoop and Spark do) holding the
counts and the shard lists. A run that dies or fails at any point before that
leaves the earlier output, and its marker, as they were.

Readers know a complete output by its marker: `read_marker(prefix)` returns it,
or None while the output is absent or being replaced.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
import uuid
from typing import Mapping

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms import __version__, error_line
from transforms.parquet import SUFFIX, InputError, output_files, parquet_rows

MARKER = "_SUCCESS"
STAGING = ".staging-"


class OutputClash(InputError):
    """Two output prefixes whose shard names overlap: one sink would delete the other's files."""


def marker_path(prefix: str) -> str:
    return prefix + MARKER


def read_marker(prefix: str) -> dict | None:
    """The `_SUCCESS` marker of a complete output (counts, shard lists), or None where there is none.

    >>> read_marker("out/grads")  # doctest: +SKIP
    {'rows_in': 3000, 'rows_out': 2990, 'rows_rejected': 10, 'outputs': {...}, ...}
    """
    path = marker_path(prefix)
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            return json.loads(fh.read().decode())
    except (OSError, ValueError):
        return None


def require_marker(prefix: str) -> dict:
    """The marker of a complete output, or an error saying the output is not complete (for schedulers' checks)."""
    marker = read_marker(prefix)
    if marker is None:
        raise RuntimeError(f"{prefix}: no {MARKER} marker, so the output is not complete")
    return marker


def _shard_regex(prefix: str) -> re.Pattern:
    """What Beam's sink deletes at finalize for `prefix`: `<prefix>-*-of-NNNNN.parquet`, any shard count."""
    return re.compile(FileSystem.translate_pattern(prefix + "-*-of-?????" + SUFFIX))


def check_no_clash(prefixes: Mapping[str, str]) -> None:
    """Refuse, at planning, any two prefixes where one's shards would match the other's pattern.

    Beam's file sink deletes every file matching `<prefix>-*-of-NNNNN.parquet` as it
    finalizes, so `--rejected out/g-rejected` beside `--output out/g` loses the
    rejected rows without a word. `prefixes` maps an option name to its prefix.
    """
    items = list(prefixes.items())
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1 :]:
            if a == b or _shard_regex(a).match(_first_shard(b)) or _shard_regex(b).match(_first_shard(a)):
                raise OutputClash(
                    f"{name_a} {a!r} and {name_b} {b!r} overlap: the shards of one match the other's "
                    f"pattern <prefix>-*-of-NNNNN{SUFFIX}, so writing one would delete the other; "
                    "give prefixes where neither is the other followed by '-'"
                )


def _first_shard(prefix: str) -> str:
    return f"{prefix}-00000-of-00001{SUFFIX}"


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
    'out/.g.staging-.../g'
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

        The earlier marker is removed first and the new one written last, so a commit cut
        short leaves no marker vouching for a mix of two runs.
        """
        first = self.prefixes[next(iter(self.prefixes))]
        if FileSystems.exists(marker_path(first)):
            FileSystems.delete([marker_path(first)])
        placed: dict[str, list[str]] = {}
        for option, prefix in self.prefixes.items():
            staged = self.staged_files(option)
            folder, _ = FileSystems.split(prefix)
            targets = [FileSystems.join(folder, FileSystems.split(path)[1]) for path in staged]
            old = {_absolute(p) for p in output_files(prefix)}
            if staged:
                FileSystems.rename(staged, targets)
            leftovers = sorted(old - {_absolute(p) for p in targets})
            if leftovers:
                FileSystems.delete(leftovers)
            placed[option] = targets
        for name, path in self.files.items():
            if FileSystems.exists(path):
                FileSystems.delete([path])
            if FileSystems.exists(self.staging[name]):
                FileSystems.rename([self.staging[name]], [path])
        self.discard()
        self._remove_stale()
        files = {name: path for name, path in self.files.items() if FileSystems.exists(path)}
        body = dict(marker, outputs=placed, files=files, version=__version__, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with FileSystems.create(marker_path(first)) as fh:
            fh.write(json.dumps(body, indent=2, sort_keys=True).encode())
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
