"""The report as one self-contained HTML page (tables and plots embedded), rendered from the JSON report.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.baseline td { background: #fffbe6; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0; }
.note { color: #555; font-size: 0.9rem; }
.wide { overflow-x: auto; } code { background: #f4f4f4; padding: 0 0.2rem; }
"""

def render_html(report: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    """A self-contained HTML page: the variant table, the plots (embedded), INT8, stages, environment."""
    from trtopt.report.markdown import _COLUMNS, render_markdown

    esc = html.escape
    rows = report["rows"]
    columns = [c for c in _COLUMNS if any(c[2](r) != "–" for r in rows)]
    table = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for _, h, _ in columns) + "</tr>"]
    for r in rows:
        cls = ' class="baseline"' if r["variant"] == report["baseline"] else ""
        table.append(f"<tr{cls}>" + "".join(f"<td>{esc(f(r))}</td>" for _, _, f in columns) + "</tr>")
    table.append("</table>")
    images = []
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        images.append(f'<h2>{esc(name.replace("_", " ").capitalize())}</h2><img alt="{esc(name)}" '
                      f'src="data:image/png;base64,{data}">')
    # The sections after the table are the Markdown renderer's, converted, so the two renderings cannot
    # disagree.
    markdown = render_markdown(report)
    details = "## " + markdown.split("\n## ", 1)[1] if "\n## " in markdown else ""
    notes = [line for line in markdown.split("\n## ", 1)[0].splitlines()[1:] if line and not line.startswith("|")]
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(report['title'])}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(report['title'])}</h1>",
        *(f'<p class="note">{_inline(line)}</p>' for line in notes),
        '<div class="wide">', *table, "</div>", *images, markdown_to_html(details), "</body></html>",
    ])

def _inline(text: str) -> str:
    """Escape, then render the inline Markdown this project writes: **bold** and `code`."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)

def markdown_to_html(markdown: str) -> str:
    """The Markdown subset `trtopt.report.markdown.render_markdown` writes (## headings, - lists, | tables |,
    paragraphs) as HTML."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if block[0].startswith("|"):
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in block if not set(line) <= set("|-: ")]
            out.append('<div class="wide"><table>' + "".join(
                "<tr>" + "".join(f"<{t}>{_inline(c)}</{t}>" for c in row) + "</tr>"
                for t, row in (("th" if i == 0 else "td", row) for i, row in enumerate(cells))) + "</table></div>")
        elif block[0].startswith("- "):
            out.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in block) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(block))}</p>")
        block.clear()

    for line in markdown.splitlines():
        if line.startswith("#"):
            flush()
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif not line.strip():
            flush()
        else:
            if block and block[0].startswith("|") != line.startswith("|"):
                flush()
            block.append(line)
    flush()
    return "\n".join(out)
