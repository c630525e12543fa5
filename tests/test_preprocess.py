"""Preprocessing: views and tile order, padding colour, normalisation, and awkward or broken image files."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dsocr_perf.dsocr.preprocess import MAX_PIXELS, ImageError, load_image, prepare

GREY = (127 / 255 - 0.5) / 0.5   # the padding colour after normalisation: -0.0039216


def pixel(view: torch.Tensor, x: int, y: int) -> list[int]:
    """Back from [-1, 1] to 0..255 at one position of a (3, H, W) view."""
    return [round(v) for v in ((view[:, y, x] + 1) / 2 * 255).tolist()]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit RGB) with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------ views

def test_a4_page_gundam_gives_six_tiles_in_row_major_order():
    # 1654x2339 (A4 at 200 dpi) -> 2 across x 3 down (doc §9). Paint each of the 6 cells its own colour;
    # tile i must show the colour of cell (row i // 2, column i % 2).
    w, h = 1654, 2339
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    for i, colour in enumerate(colours):
        r, c = divmod(i, 2)
        pixels[r * h // 3:(r + 1) * h // 3, c * w // 2:(c + 1) * w // 2] = colour
    prepared = prepare(Image.fromarray(pixels), mode="gundam")

    assert prepared.workload.tile_grid == (2, 3)
    assert prepared.workload.image_tokens == 903
    assert prepared.tiles.shape == (6, 3, 640, 640)
    assert prepared.tiles.dtype == torch.float32
    assert [pixel(tile, 320, 320) for tile in prepared.tiles] == [list(c) for c in colours]
    assert prepared.global_view.shape == (1, 3, 1024, 1024)


def test_global_view_is_padded_with_grey_127():
    prepared = prepare(Image.new("RGB", (1654, 2339), (255, 0, 0)), mode="gundam")
    view = prepared.global_view[0]
    # portrait page scaled to 1024 high, 1654 * 1024 / 2339 = 724 wide, centred: 150 grey columns each side
    assert view[:, 0, 0].tolist() == pytest.approx([GREY] * 3, abs=1e-6)
    assert GREY == pytest.approx(-0.0039216, abs=1e-7)
    assert pixel(view, 149, 512) == [127, 127, 127]
    assert pixel(view, 151, 512) == [255, 0, 0]
    assert pixel(view, 872, 512) == [255, 0, 0]
    assert pixel(view, 875, 512) == [127, 127, 127]
    assert view.min() >= -1 and view.max() <= 1


def test_small_modes_squash_without_padding():
    prepared = prepare(Image.new("RGB", (1654, 2339), (255, 0, 0)), mode="tiny")
    assert prepared.tiles is None
    assert prepared.global_view.shape == (1, 3, 512, 512)
    assert pixel(prepared.global_view[0], 0, 0) == [255, 0, 0]      # no grey border
    assert prepared.workload.image_tokens == 73


def test_page_at_most_640_has_no_tiles_and_273_tokens():
    prepared = prepare(Image.new("RGB", (640, 480), (0, 0, 0)), mode="gundam", text_tokens=9)
    assert prepared.tiles is None
    assert prepared.workload.image_tokens == 273
    assert prepared.workload.prompt_tokens == 283
    # landscape: 1024 wide, 768 high, 128 grey rows on top and bottom
    assert pixel(prepared.global_view[0], 512, 127) == [127, 127, 127]
    assert pixel(prepared.global_view[0], 512, 129) == [0, 0, 0]


def test_max_tiles_is_passed_to_the_workload():
    slide = Image.new("RGB", (1920, 1080), (10, 20, 30))
    assert prepare(slide, max_tiles=9).tiles.shape[0] == 8
    assert prepare(slide, max_tiles=6).tiles.shape[0] == 2


def test_one_by_one_image():
    prepared = prepare(Image.new("RGB", (1, 1), (10, 20, 30)))
    assert prepared.tiles is None
    assert prepared.workload.image_tokens == 273
    assert pixel(prepared.global_view[0], 0, 0) == [10, 20, 30]
    assert pixel(prepared.global_view[0], 1023, 1023) == [10, 20, 30]


# ---------------------------------------------------------------------------------- conversions

def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    # v / 257 rounded: 0, 3.89 -> 4, 128, 255
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 4, 128, 255]
    assert load_image(path).mode == "RGB"


def test_cmyk_converted_to_rgb():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))        # paper white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))      # full cyan
    cmyk.putpixel((2, 0), (0, 0, 0, 255))      # full black
    rgb = np.asarray(load_image(cmyk))
    assert rgb[0].tolist() == [[255, 255, 255], [0, 255, 255], [0, 0, 0]]


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))        # fully transparent black -> white
    rgba.putpixel((1, 0), (255, 0, 0, 255))    # opaque red stays red
    rgba.putpixel((2, 0), (0, 0, 255, 128))    # half blue over white
    rgb = np.asarray(load_image(rgba)).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert np.abs(rgb[0, 2] - [127, 127, 255]).max() <= 1

    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(load_image(la))[0, 0].tolist() == [255, 255, 255]

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(palette))[0].tolist() == [[255, 255, 255], [50, 60, 70]]


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                            # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (0, 0, 0)).save(path, exif=exif)
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


# ------------------------------------------------------------------------------------ bad files

def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "page.png"
    path.write_text("this is not a PNG\n")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)
    with pytest.raises(ImageError):
        prepare(path)


def test_huge_dimensions_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30000, 30000))
    with pytest.raises(ImageError, match=r"too large \(900,000,000 pixels, limit 178,956,970\)"):
        load_image(path)
    assert MAX_PIXELS == 178_956_970


def test_huge_dimensions_refused_even_with_pil_guard_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30000, 30000))
    with pytest.raises(ImageError, match=r"too large \(30000x30000 = 900,000,000 pixels"):
        load_image(path)


def test_error_is_a_value_error_with_one_line(tmp_path):
    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "missing.jpg")
    assert "\n" not in str(info.value)
