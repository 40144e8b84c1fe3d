"""A vocabulary file: token id -> its string, to name the ids in the job's token aggregates.

One token a line (the line number, from 0, is the id), or, in a file named `*.json`, a JSON
object mapping ids to strings (`{"0": "[PAD]", "1": "the"}`) or a JSON list. Local path or any
fsspec URL.
"""

from __future__ import annotations

import json

from transforms.feeds.columns import FeedError


def read_vocabulary(path: str) -> tuple[str | None, ...]:
    """The tokens by id (None for an id the file does not name); a FeedError naming the file if unreadable."""
    import fsspec

    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise FeedError(f"vocabulary file {path!r} cannot be read: {err}") from err
    if not path.lower().endswith(".json"):  # a line may itself start with "[" ([PAD]): the name decides
        return tuple(text.splitlines())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FeedError(f"vocabulary file {path!r} is not valid JSON: {err}") from err
    if isinstance(data, list):
        return tuple(None if t is None else str(t) for t in data)
    try:
        by_id = {int(k): str(v) for k, v in data.items()}
    except ValueError as err:
        raise FeedError(f"vocabulary file {path!r}: its keys must be token ids (whole numbers): {err}") from err
    if any(i < 0 for i in by_id):
        raise FeedError(f"vocabulary file {path!r}: token ids must be 0 or more")
    size = max(by_id, default=-1) + 1
    return tuple(by_id.get(i) for i in range(size))
