"""The report as one self-contained HTML page (tables and plots embedded), rendered from the JSON report.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1760px; padding: 0 1.5rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 1.6rem; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.baseline td { background: #fffbe6; } tr.untimed td { color: #666; font-style: italic; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 0.8rem; }
.plots figure.tradeoff { grid-column: 1 / -1; max-width: 1400px; }  /* the headline plot: a full row */
.plots figure { margin: 0; min-width: 0; }
.plots img { max-width: 100%; box-sizing: border-box; border: 1px solid #ddd; }  /* shrunk to fit, never enlarged */
td:last-child { white-space: normal; }  /* flags, plan notes: the one column allowed to wrap */
figcaption { font-size: 0.85rem; color: #555; }
p, li { max-width: 75rem; } .wide { overflow-x: auto; } code { background: #f4f4f4; padding: 0 0.2rem; }
"""

_CAPTIONS = {"tradeoff": "Accuracy vs latency and size", "latency": "Latency distributions",
             "quant_error": "INT8 error per layer", "sensitivity": "Per-layer INT8 sensitivity"}

def render_html(report: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    """A self-contained HTML page: the Markdown report (`trtopt.report.markdown.render_markdown`) as HTML,
    so the two renderings cannot disagree, with the plots embedded (PNG data URIs) after the summary
    tables. The baseline's rows are highlighted, untimed rows greyed."""
    from trtopt.report.markdown import render_markdown

    esc = html.escape
    figures = []
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        caption = _CAPTIONS.get(name, name.replace("_", " ").capitalize())
        figures.append(f'<figure class="{esc(name)}"><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
    markdown = render_markdown(report)
    # the plots go after the summary tables (and their warnings), before the details
    head, sep, rest = markdown.partition("\n## Timing details")
    if not sep:
        head, sep, rest = markdown.partition("\n## Accuracy details")
    body = markdown_to_html(head, report["baseline"])
    if figures:
        body += '\n<h2>Plots</h2>\n<div class="plots">' + "".join(figures) + "</div>"
    body += "\n" + markdown_to_html(sep + rest, report["baseline"])
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{esc(report['title'])}</title>",
        f"<style>{_STYLE}</style></head><body>", body, "</body></html>",
    ])

def _inline(text: str) -> str:
    """Escape, then render the inline Markdown this project writes: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)

def markdown_to_html(markdown: str, baseline: str | None = None) -> str:
    """The Markdown subset `trtopt.report.markdown.render_markdown` writes (## headings, - lists, | tables |,
    paragraphs) as HTML; table rows whose first cell is ``baseline`` get class "baseline", rows that say
    "untimed" class "untimed"."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if block[0].startswith("|"):
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
                     for line in block if not set(line) <= set("|-: ")]
            out.append('<div class="wide"><table>' + "".join(
                f"<tr{_row_class(row, baseline) if i else ''}>" + "".join(
                    f"<{'td' if i else 'th'}>{_inline(c)}</{'td' if i else 'th'}>" for c in row) + "</tr>"
                for i, row in enumerate(cells)) + "</table></div>")
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


def _row_class(cells: list[str], baseline: str | None) -> str:
    if baseline is not None and cells and cells[0] == baseline:
        return ' class="baseline"'
    return ' class="untimed"' if "untimed" in cells else ""
