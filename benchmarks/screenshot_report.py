"""Headless-Chromium screenshots of a rendered ``report.html`` at 1280 and 1920 px, to check the page by eye.

    python benchmarks/screenshot_report.py runs/demo/efficientnet_lite0/report.html [--out DIR] [--height PX]

Writes ``<folder>-<stem>-1280.png`` and ``-1920.png`` (window height ``--height``, default 2400 px: the
first screen and what follows) beside the report or into ``--out``, and prints whether anything scrolls
horizontally at each width (the page, or a table's scroll box: scrollWidth > clientWidth, measured by a
probe script read back with ``--dump-dom``). Needs Debian's ``chromium`` (``apt-get install chromium``); not run by the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

WIDTHS = (1280, 1920)


def chromium() -> str:
    """Path of a Chromium binary, or exit with the install command."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("screenshot_report: no chromium found; fix: apt-get update && apt-get install -y chromium")


def screenshot(report: Path, out: Path, width: int, height: int) -> Path:
    """One PNG of ``report`` in a ``width`` × ``height`` window (device scale 1)."""
    target = out / f"{report.parent.name}-{report.stem}-{width}.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--window-size={width},{height}",
                    f"--screenshot={target}", report.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return target


_PROBE = """<script>
const boxes = [document.documentElement, ...document.querySelectorAll('div')];
document.title = 'W=' + boxes.filter(e => e.scrollWidth > e.clientWidth + 1).length;
</script></body>"""


def overflows(report: Path, width: int) -> bool:
    """Whether anything scrolls horizontally in a ``width``-px window: the page, or a table's scroll box."""
    probe = report.parent / f".probe-{width}.html"
    page = report.read_text(encoding="utf-8").replace("</body>", _PROBE)
    probe.write_text(page, encoding="utf-8")
    try:
        dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},1000",
                              "--dump-dom", probe.resolve().as_uri()], check=True, capture_output=True, text=True,
                             timeout=120).stdout
    finally:
        probe.unlink()
    start = dom.find("<title>W=")
    return start >= 0 and int(dom[start + 9:dom.find("<", start + 9)]) > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: beside the report)")
    parser.add_argument("--height", type=int, default=2400, help="window height in px (default %(default)s)")
    args = parser.parse_args()
    out = args.out or args.report.parent
    out.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        path = screenshot(args.report, out, width, args.height)
        print(f"{path} ({path.stat().st_size / 1e3:.0f} kB); horizontal scroll at {width} px: "
              f"{'yes' if overflows(args.report, width) else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
