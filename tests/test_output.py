"""Grounding markup -> pixel boxes, result.mmd, overlay and crops (docs §6)."""
from PIL import Image

from dsocr_perf.dsocr.output import Region, clean_text, parse_regions, to_markdown, write_outputs

SAMPLE = (
    "<|ref|>title<|/ref|><|det|>[[330, 198, 558, 230]]<|/det|>\n# R&D QUALITY\n\n"
    "<|ref|>image<|/ref|><|det|>[[0, 0, 999, 499], [500, 500, 999, 999]]<|/det|>\n"
    "<|ref|>text<|/ref|><|det|>[[10, 900, 990, 950]]<|/det|>\nBody text.<｜end▁of▁sentence｜>"
)


def test_boxes_in_pixels_of_the_original_image():
    regions = parse_regions(SAMPLE, 1000, 2000)
    # pixel = int(v / 999 * size): 330/999*1000 = 330.33 -> 330, 198/999*2000 = 396.4 -> 396, ...
    assert regions[0] == Region("title", (330, 396, 558, 460), (330, 198, 558, 230))
    assert [r.label for r in regions] == ["title", "image", "image", "text"]
    assert regions[1].box == (0, 0, 1000, 998)          # 499/999*2000 = 998.998 -> 998
    assert regions[2].box == (500, 1001, 1000, 2000)    # 500/999*1000 = 500.5 -> 500; 500/999*2000 = 1001.0
    assert regions[3].box == (10, 1801, 990, 1901)


def test_malformed_markup_gives_no_boxes():
    junk = "<|ref|>x<|/ref|><|det|>[[1, 2, 3]]<|/det|> <|ref|>y<|/ref|><|det|>oops<|/det|> <|ref|>z<|/ref|>"
    assert parse_regions(junk, 100, 100) == []
    # a single box without the outer list, and coordinates beyond the grid clamp to 999
    assert parse_regions("<|ref|>t<|/ref|><|det|>[0, 0, 1200, 999]<|/det|>", 999, 999)[0].box == (0, 0, 999, 999)


def test_markdown_replaces_image_regions_and_drops_markup():
    md = to_markdown(SAMPLE, ["images/0.png", "images/1.png"])
    # markup of other labels is removed, its content stays; line breaks around it are kept as written
    assert md == "# R&D QUALITY\n\n![](images/0.png)\n![](images/1.png)\n\n\nBody text.\n"
    assert clean_text("abc<｜end▁of▁sentence｜>") == "abc"


def test_write_outputs(tmp_path):
    image = Image.new("RGB", (1000, 2000), "white")
    paths = write_outputs(tmp_path, image, SAMPLE)
    assert paths["raw"].read_text() == SAMPLE
    assert "![](images/1.png)" in paths["markdown"].read_text()
    assert Image.open(tmp_path / "images/0.png").size == (1000, 998)
    assert Image.open(tmp_path / "images/1.png").size == (500, 999)
    overlay = Image.open(paths["overlay"])
    assert overlay.size == (1000, 2000)
    assert overlay.getpixel((330, 420)) != (255, 255, 255)     # the title box's left edge is drawn
    assert overlay.getpixel((700, 1500)) == (255, 255, 255)    # inside a box stays untouched
