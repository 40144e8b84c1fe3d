"""The rejected-rows section: rows counted by stage and reason, streamed (a page of its own kind's, beside each main output)."""

from __future__ import annotations

import collections
import html

from pipeline.reader import IncompleteOutput, iter_listed, iter_tables, output_shards
from pipeline.report.figures import bars
from pipeline.report.html import figure, section, table_html
from transforms.contract import REJECTED_COLUMNS
from transforms.io.files import InputError

MAX_REASONS = 30
STAGE, REASON = REJECTED_COLUMNS[:2]


def rejected_section(prefix: str, complete: bool, option: str | None = None) -> str:
    """Rejected rows counted by stage and reason, streamed: of the rejected-rows output at `prefix`, or with
    `option`, of exactly the shards the marker at `prefix` lists under it (the main job's --rejected)."""
    reasons: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    if option is None and not output_shards(prefix, require_complete=False):
        return section("Rejected rows", f"<p>No rejected-rows output found at {html.escape(prefix)}.</p>", "rejected")
    try:
        columns = [STAGE, REASON]
        tables = iter_listed(prefix, option, columns) if option else iter_tables(prefix, columns, require_complete=complete)
        for table in tables:
            for stage, reason in zip(table.column(STAGE).to_pylist(), table.column(REASON).to_pylist()):
                reasons[(stage, reason)] += 1
                stages[stage] += 1
    except (IncompleteOutput, InputError):
        return section("Rejected rows", f"<p>No rejected-rows output found at {html.escape(prefix)}.</p>", "rejected")
    total = sum(stages.values())
    if not total:
        return section("Rejected rows", '<p class="rejected-total" data-count="0">No row was rejected.</p>', "rejected")
    rows = [(stage, reason, f"{n:,}") for (stage, reason), n in reasons.most_common(MAX_REASONS)]
    rest = total - sum(n for _, n in reasons.most_common(MAX_REASONS))
    if rest:
        rows.append(("", f"{len(reasons) - MAX_REASONS} other reasons", f"{rest:,}"))
    body = f'<p class="rejected-total" data-count="{total}">{total:,} rows rejected.</p>'
    body += figure(
        bars(list(stages), list(stages.values()), "rejected rows by stage", "rows"),
        "rejected rows by stage",
        "rejected-stages",
        dict(stages),
    )
    body += table_html(["stage", "reason", "rows"], rows, "reasons")
    return section("Rejected rows", body, "rejected")
