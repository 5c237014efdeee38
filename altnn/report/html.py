"""Render the offline HTML page: the comparison table, its notes and the figures."""

import base64
import html
from collections.abc import Sequence
from typing import Any

from altnn.report.table import (
    DISPLAY_COLUMNS,
    HEADER_LINE,
    NOTES,
    SUBSET_WARNING,
    TITLE,
    any_subset,
    display_cells,
)

HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
.warning { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.5em; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


def render_html(rows: Sequence[dict[str, Any]], figures: Sequence[tuple[str, bytes]]) -> str:
    """Render one offline HTML page: the table, the notes and every figure as base64 PNG.

    `figures` pairs each file name with its PNG bytes. The page links to nothing, so it
    reads the same without a network.
    """
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(TITLE)}</title>", f"<style>{HTML_STYLE}</style>", "</head>",
             "<body>", f"<h1>{html.escape(TITLE)}</h1>", f"<p>{html.escape(HEADER_LINE)}</p>"]
    if any_subset(rows):
        parts.append(f'<p class="warning">{html.escape(SUBSET_WARNING)}</p>')

    parts.append("<table>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in DISPLAY_COLUMNS) + "</tr>")
    for row in rows:
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in display_cells(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    parts.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in NOTES) + "</ul>")

    parts.append("<h2>Figures</h2>")
    for name, png in figures:
        encoded = base64.b64encode(png).decode("ascii")
        caption = html.escape(name)
        parts.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
                     f"<figcaption>{caption}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
