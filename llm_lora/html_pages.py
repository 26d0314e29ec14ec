"""The one stylesheet and the few builders that every HTML report page shares.

The run report, the worth-it report, the per-example comparison and the preflight report are
stored as HTML artifacts and shown in the ZenML dashboard, which renders a page as it is. So each
page is self-contained: the stylesheet inline, no scripts, fonts or images to fetch. Values from
data, configs and model answers are escaped; only markup built by the reports' own code is not.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

# One look for every report. Tables of figures (class "figures") right-align their numbers.
# Colours: green for better or promoted, red for worse or refused, amber for needs a look.
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} h3{margin:.6em 0 .3em}
table{border-collapse:collapse;margin:.5em 0 1.5em} th{background:#f3f3f3}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
table.figures td,table.figures th{text-align:right} table.figures td:first-child{text-align:left}
pre{white-space:pre-wrap;max-width:28em;margin:0;font-size:.85em}
td.better,.ok{color:#067647;font-weight:600} td.worse,.bad{color:#b42318;font-weight:600} .warn{color:#b54708}
tr.better{background:#ecfdf3} tr.worse{background:#fef3f2}
.decision,.verdict{padding:.6em 1em;border-radius:6px;margin:.5em 0 1em}
.promoted,.yes{background:#ecfdf3;border:1px solid #abefc6} .no{background:#fef3f2;border:1px solid #fecdca}
.held,.unsure{background:#fffaeb;border:1px solid #fedf89}
.bar{display:inline-block;height:.7em;background:#7a5af8;vertical-align:middle;margin-right:.4em}
.side-by-side{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}
.legend span{display:inline-block;width:1.2em;height:.25em;margin:0 .3em .2em 1em;vertical-align:middle}
tr.finetuned{font-weight:600} tr.best td:first-child::after{content:" (best baseline)";font-weight:400;color:#666}
"""


def escape(value) -> str:
    """Any value as text that is safe in HTML, quotes included (values also land in attributes)."""
    return html.escape(str(value))


def number(value, digits: int = 3, signed: bool = False) -> str:
    """A number with `digits` decimals, with its sign when `signed`; "–" for None or NaN (nothing measured)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{'+' if signed else ''}.{digits}f}"


def bar(width_px: float) -> str:
    """A horizontal bar, for charts that need no plotting library."""
    return f"<span class='bar' style='width:{max(width_px, 0):.0f}px'></span>"


def table(
    rows: Iterable[Sequence | str],
    header: Sequence | str | None = None,
    *,
    element_id: str | None = None,
    css: str | None = None,
) -> str:
    """A table whose cells are escaped, unless a row comes rendered.

    Args:
        rows: Each row a sequence of values (one escaped cell each), or a `<tr>` the caller
            rendered itself, for rows and cells that carry classes or markup.
        header: The column names (escaped), a rendered `<tr>` of `<th>` cells, or None for no header.
        element_id: The table's id, for tests and the dashboard to find it.
        css: The table's class ("figures": right-aligned numbers).

    Returns:
        The `<table>` element.
    """
    def render(row, tag: str) -> str:
        if isinstance(row, str):
            return row
        return "<tr>" + "".join(f"<{tag}>{escape(cell)}</{tag}>" for cell in row) + "</tr>"

    attributes = (f' id="{escape(element_id)}"' if element_id else "") + (f' class="{escape(css)}"' if css else "")
    head = f"<thead>{render(header, 'th')}</thead>" if header is not None else ""
    body = "".join(render(row, "td") for row in rows)
    return f"<table{attributes}>{head}<tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole page: the title, the shared stylesheet inline, and the body as given."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>{body}\n</body></html>"
    )
