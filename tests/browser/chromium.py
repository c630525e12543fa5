"""The system Chromium under Playwright, for the report's browser tests and screenshots.

Playwright's own browser downloads are never used: the browser is Debian's `chromium` package
(`apt-get install chromium`), started headless with networking, updates and sync off.
"""
from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WIDTHS = (800, 1280)


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (apt-get install -y chromium)"
    return None


def launch(playwright):
    """A headless system Chromium."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
