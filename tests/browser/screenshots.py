"""Screenshots of the committed example's report.html at 1280 and 800 px (not a test).

    python tests/browser/screenshots.py [--force]

writes traces/examples/h100-gundam.report-1280.png and ...-800.png: the whole page when its PNG stays
under MAX_BYTES (colours reduced to a palette when Pillow is installed), else the first screen. The
report is built in a temporary folder from traces/examples/h100-gundam.sqlite.gz; existing PNGs are
kept unless --force.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from browser.chromium import WIDTHS, launch, missing  # noqa: E402

EXAMPLE = REPO / "traces/examples/h100-gundam.sqlite.gz"
MAX_BYTES = 1_000_000
SCREEN_HEIGHT = 900


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="overwrite existing screenshots")
    args = parser.parse_args(argv)
    targets = {width: EXAMPLE.with_name(f"h100-gundam.report-{width}.png") for width in WIDTHS}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.force:
        print(f"Error: {', '.join(existing)} already exist; pass --force to overwrite", file=sys.stderr)
        return 2
    why = missing()
    if why:
        print(f"Error: no browser: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        page = build_report(Path(tmp))
        for width, target in shoot(page, targets).items():
            print(f"wrote {target} ({target.stat().st_size:,} bytes, {width} px wide)")
    return 0


def build_report(folder: Path) -> Path:
    """The example's report, with the trace named by its path in the repository."""
    import os

    from dsocr_perf.analyze.out.report import write_report
    from dsocr_perf.analyze.trace import open_trace

    os.chdir(REPO)
    write_report(open_trace(EXAMPLE.relative_to(REPO), cache=False), folder)
    return folder / "report.html"


def shoot(page_path: Path, targets: dict[int, Path]) -> dict[int, Path]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        for width, target in targets.items():
            view = browser.new_page(viewport={"width": width, "height": SCREEN_HEIGHT})
            view.goto(page_path.as_uri())
            png = small(view.screenshot(full_page=True))
            if len(png) > MAX_BYTES:
                png = small(view.screenshot())
            target.write_bytes(png)
            view.close()
        browser.close()
    return targets


def small(png: bytes) -> bytes:
    """The PNG with its colours reduced to a 256-colour palette (Pillow), or as it is without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
