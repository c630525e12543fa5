"""Render the bundled sample page: an A4-like document (headings, paragraphs, a table).

    python -m dsocr_perf.launch.make_sample_page [OUT.png]      (default launch/assets/sample_page.png)

1654 x 2339 pixels (A4 at 200 dpi) is portrait 0.707: Gundam mode picks a 2x3 tile grid for it
(903 image tokens: dsocr.workload.workload_shapes). Text uses Pillow's built-in font so the
page renders the same on every machine; saved as 8-bit greyscale to stay small.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1654, 2339
MARGIN = 140
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "sample_page.png"

TITLE = "Quarterly Operations Report"
SUBTITLE = "Northfield Logistics Ltd. -- third quarter, internal distribution"
SECTIONS = [
    ("1. Summary",
     "Shipments grew for the third quarter in a row while the cost per parcel fell. The new "
     "sorting line at the eastern depot reached its design throughput in August, two weeks "
     "ahead of plan. Late deliveries remained above target in the northern region, mostly on "
     "rural routes where a single van covers more than two hundred kilometres a day."),
    ("2. Volumes by region",
     "The table below lists parcels handled, the share delivered on the promised day and the "
     "average cost per parcel. Figures are rounded; the appendix gives the exact counts and the "
     "method used to attribute shared depot costs to each region."),
]
TABLE_HEADER = ("Region", "Parcels", "On time", "Cost / parcel", "Change")
TABLE_ROWS = [
    ("North", "412,300", "91.4 %", "3.62", "+2.1 %"),
    ("East", "655,120", "96.8 %", "2.87", "-4.5 %"),
    ("South", "538,940", "95.2 %", "3.05", "-1.2 %"),
    ("West", "301,775", "94.1 %", "3.40", "+0.4 %"),
    ("Total", "1,908,135", "94.9 %", "3.16", "-1.3 %"),
]
CLOSING = [
    ("3. Outlook",
     "For the fourth quarter we expect seasonal volume to rise by a quarter. Two temporary "
     "sorting shifts are planned for November and December, and the rural routes in the north "
     "will be split so that no van exceeds one hundred and sixty kilometres. Hiring for the "
     "seasonal peak starts in October; training takes place at the eastern depot."),
    ("4. Risks",
     "Fuel prices and the availability of drivers remain the main risks. A ten percent rise in "
     "diesel would add about four cents to the average cost per parcel. The depot lease in the "
     "west ends next year and negotiations have started."),
]


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def paragraph(draw: ImageDraw.ImageDraw, y: int, text: str, size: int = 34, width: int = 80) -> int:
    f = font(size)
    for line in textwrap.wrap(text, width=width):
        draw.text((MARGIN, y), line, fill=20, font=f)
        y += int(size * 1.45)
    return y + size


def table(draw: ImageDraw.ImageDraw, y: int) -> int:
    f_head, f_cell = font(32), font(32)
    columns = [MARGIN, MARGIN + 300, MARGIN + 600, MARGIN + 860, MARGIN + 1130, WIDTH - MARGIN]
    row_h = 70
    rows = [TABLE_HEADER, *TABLE_ROWS]
    for i, row in enumerate(rows):
        top = y + i * row_h
        if i == 0:
            draw.rectangle([columns[0], top, columns[-1], top + row_h], fill=225)
        for c, cell in enumerate(row):
            draw.text((columns[c] + 18, top + 18), cell, fill=10, font=f_head if i == 0 else f_cell)
    bottom = y + len(rows) * row_h
    for i in range(len(rows) + 1):
        draw.line([columns[0], y + i * row_h, columns[-1], y + i * row_h], fill=60, width=3)
    for x in columns:
        draw.line([x, y, x, bottom], fill=60, width=3)
    return bottom + 60


def render() -> Image.Image:
    page = Image.new("L", (WIDTH, HEIGHT), 255)
    draw = ImageDraw.Draw(page)
    y = MARGIN
    draw.text((MARGIN, y), TITLE, fill=0, font=font(72))
    y += 110
    draw.text((MARGIN, y), SUBTITLE, fill=70, font=font(34))
    y += 70
    draw.line([MARGIN, y, WIDTH - MARGIN, y], fill=0, width=4)
    y += 60
    for heading, text in SECTIONS:
        draw.text((MARGIN, y), heading, fill=0, font=font(48))
        y = paragraph(draw, y + 80, text)
    y = table(draw, y)
    for heading, text in CLOSING:
        draw.text((MARGIN, y), heading, fill=0, font=font(48))
        y = paragraph(draw, y + 80, text)
    draw.text((WIDTH // 2 - 60, HEIGHT - MARGIN), "Page 1 of 4", fill=90, font=font(28))
    return page


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    render().save(out, optimize=True)
    print(f"wrote {out} ({WIDTH}x{HEIGHT}, {out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
