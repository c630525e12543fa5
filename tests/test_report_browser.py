"""report.html in a real browser (system Chromium under Playwright), at 800 and 1280 px wide: the page
never scrolls sideways (wide tables scroll inside their own box), its sections are there, and its
text is text (a table cell selects as its characters). Skipped where Chromium or Playwright is absent."""
from pathlib import Path

import pytest
from browser.chromium import WIDTHS, launch, missing

from dsocr_perf.analyze.out.report import write_report
from dsocr_perf.analyze.trace import open_trace

EXAMPLE = Path(__file__).resolve().parents[1] / "traces/examples/h100-gundam.sqlite.gz"
SECTIONS = ("opportunities", "stages", "wall-time", "efficiency", "decode-steps", "step-timeline", "kernels", "setup")

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no browser: {missing()}")


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser-report")
    write_report(open_trace(EXAMPLE, cache=False), out)
    return out / "report.html"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def page(request, browser, report_page):
    view = browser.new_page(viewport={"width": request.param, "height": 900})
    view.goto(report_page.as_uri())
    yield view
    view.close()


def test_no_horizontal_page_scroll(page):
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner
    # every figure fits the window too (it scales, it does not overflow)
    assert page.evaluate("Math.max(...[...document.querySelectorAll('.figure svg')].map(s => "
                         "s.getBoundingClientRect().right))") <= inner


def test_key_sections_are_there(page):
    for anchor in SECTIONS:
        box = page.locator(f"#{anchor}").bounding_box()
        assert box is not None and box["height"] > 0, anchor
    assert page.locator("ol.opps li").count() == 3
    assert page.locator("#wall-time ~ .figure svg").count() >= 1


def test_table_text_is_selectable(page):
    cell = page.locator("td", has_text="llm_prefill").first
    selected = cell.evaluate("""td => {
        const range = document.createRange();
        range.selectNodeContents(td);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        return [selection.toString(), getComputedStyle(td).userSelect];
    }""")
    assert selected[0] == "llm_prefill" and selected[1] != "none"
    # the figures' words are SVG text, not pixels
    assert page.locator("svg text").count() > 50


def test_long_names_wrap_instead_of_widening_the_page(browser, report_page, tmp_path):
    """A range or kernel name of 300 characters without a space (real traces have them) wraps."""
    import json

    from dsocr_perf.analyze.out.html import render_html

    data = json.loads((report_page.parent / "metrics.json").read_text())
    long_name = "range_" + "x" * 300
    data["opportunities"][0]["title"] = f"{long_name}: the GPU waits"
    data["top_kernels"] = {long_name: data["top_kernels"]["dsocr:decode"]}
    data["warnings"] = [f"a warning about {long_name}"]
    page_path = tmp_path / "long.html"
    page_path.write_text(render_html(data))
    for width in WIDTHS:
        view = browser.new_page(viewport={"width": width, "height": 900})
        view.goto(page_path.as_uri())
        assert view.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width
        view.close()
