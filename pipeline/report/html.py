"""The report's HTML: escaping, anchors, tables, figures' markup, the page and its Content-Security-Policy.

Pages are data: every string that reaches the page (column, model input and
output names, key values, groups, reasons, metadata, the marker's and the
summary's fields) is escaped here, anchors are slugs of names (never the names), and
a Content-Security-Policy allows only the page's inline styles and `data:` images:
the page runs no script.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from typing import Sequence

# The page runs no script and fetches nothing: only its own inline styles and its data: images.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}figcaption{font-size:.85em;color:#555}
img{max-width:100%}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
.warning{background:#fff3cd;border:1px solid #e0c36a;padding:.6em}nav a{margin-right:1em}
pre{white-space:pre-wrap;word-break:break-all;font-size:.8em;background:#f7f7f7;padding:.5em}
"""


# A fixed anchor written in this file ("run", "rejected"); anchors of names from data come from slug().
_FIXED_ANCHOR = re.compile(r"[a-z][a-z0-9-]*")


def slug(name: str) -> str:
    """The anchor of a name from data: lowercase [a-z0-9-] and a short hash of the name, so two names never share one."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{text}-{digest}" if text else digest


def count_text(value) -> str:
    """A count from the marker or the summary, with thousands separators; anything else (a crafted file) as text."""
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


class Section(str):
    """A section's HTML, with its title and anchor for the page's nav."""

    title: str
    anchor: str


def section(title: str, body: str, anchor: str) -> Section:
    if not _FIXED_ANCHOR.fullmatch(anchor):  # a name from data that no caller slugged: never raw in an id
        anchor = slug(anchor)
    made = Section(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')
    made.title, made.anchor = title, anchor
    return made


def table_html(header: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if any(header) else ""
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{html.escape(cls)}">{head}<tbody>{body}</tbody></table>'


def figure(url: str, caption: str, chart: str, values=None) -> str:
    """An <img> in a <figure>; `values` (what was drawn) ride along as JSON in data-values."""
    data = f" data-values='{html.escape(json.dumps(values), quote=True)}'" if values is not None else ""
    return (
        f'<figure data-chart="{html.escape(chart)}"{data}><img alt="{html.escape(caption)}" src="{html.escape(url)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


# Characters of a key's value a page shows: a 5,000-character key (a document's text kept as its key) filled
# screens of its table and pushed the scores out of sight.
KEY_SHOWN = 80


def key_text(keys: dict) -> str:
    """A row's keys as the page shows them: each value cut to KEY_SHOWN characters, saying how long it was. Only
    for showing: rows are matched by `passes.key_id`, which keeps every character."""
    return ", ".join(f"{k}={_shown(str(v))}" for k, v in keys.items()) or "(no key columns kept)"


def _shown(value: str) -> str:
    return value if len(value) <= KEY_SHOWN else f"{value[:KEY_SHOWN]}… ({len(value):,} characters)"


def page(title: str, parts: Sequence[str]) -> str:
    """The whole page: its nav lists the sections (by their title and anchor, never by reading the HTML back)."""
    nav = "".join(f'<a href="#{p.anchor}">{html.escape(p.title)}</a>' for p in parts if isinstance(p, Section))
    text = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{''.join(parts)}</body></html>"
    )
    return text.translate(BIDI_SHOWN)


# Unicode's bidirectional controls, shown as their code points: escaped, a key holding U+202E still turned the
# rest of its line around on the page (a value read backwards). The page's own text has none.
BIDI_SHOWN = {c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]}
