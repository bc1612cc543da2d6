"""Writing a report: ``report.json``, ``report.md``, ``report.html`` and ``plots/``, each atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtopt.files import ensure_writable, write_json, write_text
from trtopt.report.markdown import render_markdown


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, force: bool = False,
                 html: bool = False) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` (and with ``html``, ``report.html`` + ``plots/*.png``)
    into ``out_dir`` atomically; returns their paths.

    All paths are checked (and the Markdown rendered) before any file is written, so a refusal leaves no
    new JSON beside an old Markdown file.
    """
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    if html:
        paths["html"] = out / "report.html"
    for path in paths.values():
        ensure_writable(path, force)
    markdown = render_markdown(report)
    write_json(paths["json"], report, force=force)
    write_text(paths["markdown"], markdown, force=force)
    if html:
        from trtopt.report.html import render_html
        from trtopt.report.plots import render_plots

        plots = render_plots(report, out / "plots")
        write_text(paths["html"], render_html(report, plots), force=force)
        paths.update({f"plot_{name}": path for name, path in plots.items()})
    return paths
