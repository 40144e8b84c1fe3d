"""Faults a test injects into the job through `run(..., fault=...)`; the production job reads no switch of its own."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa

from transforms.feeds.plan import Fault


class InjectedFault(RuntimeError):
    """A transient error a test asked for."""


class FailFirstAttempt(Fault):
    """Makes a bundle's first attempt raise, so a test proves a runner's retry loses and duplicates nothing.

    A retry starts with the same element and finds the marker its first attempt
    left in `folder`, so it goes on. A plain object holding a path: it pickles,
    as multi-process runners need.
    """

    def __init__(self, folder: str):
        self.folder = str(folder)

    def bundle_started(self, source: str, batch) -> None:
        content = batch.serialize() if isinstance(batch, pa.RecordBatch) else repr(batch).encode()
        marker = os.path.join(self.folder, hashlib.sha256(source.encode() + b"\0" + bytes(content)).hexdigest())
        try:
            open(marker, "x").close()
        except FileExistsError:
            return
        raise InjectedFault(f"injected transient fault in a bundle starting in {source}")


class DropFirstOutput(Fault):
    """Drops the first output table a worker process sends to the sink, after its rows were counted:
    the loss no runner's counters would notice, which the footer count must."""

    def __init__(self):
        self.dropped = False

    def output(self, table: pa.Table) -> pa.Table | None:
        if self.dropped:
            return table
        self.dropped = True
        return None
