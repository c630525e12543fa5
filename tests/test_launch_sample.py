"""The bundled sample page: A4 at 200 dpi, Gundam 2x3 tiles, small, and reproducible from its script."""

from PIL import Image, ImageChops, ImageStat

from dsocr_perf.dsocr.workload import workload_shapes
from dsocr_perf.launch.make_sample_page import DEFAULT_OUT, render


def test_sample_page_shape_and_size():
    assert DEFAULT_OUT.stat().st_size < 300 * 1024
    with Image.open(DEFAULT_OUT) as page:
        assert page.size == (1654, 2339)
    w = workload_shapes(1654, 2339, "gundam")
    # docs/deepseek-ocr-v1.md: 2x3 tiles of 10x10 tokens (+ a newline per row) + the 16x16 global view.
    assert w.tile_grid == (2, 3)
    assert w.image_tokens == (3 * 10) * (2 * 10 + 1) + 16 * 17 + 1 == 903


def test_committed_page_is_what_the_script_renders():
    # Exact on the machine that made it; another FreeType may antialias a little differently.
    with Image.open(DEFAULT_OUT) as committed:
        diff = ImageChops.difference(committed.convert("L"), render())
    assert ImageStat.Stat(diff).mean[0] < 1.0
