"""Crop grids and image-token counts against docs/deepseek-ocr-v1.md §4 and §9."""
import pytest

from dsocr_perf.dsocr.workload import MAX_TILES_VLLM, select_tile_grid, workload_shapes


@pytest.mark.parametrize("size, max_tiles, grid, image_tokens", [
    ((1654, 2339), 9, (2, 3), 903),     # A4 portrait page: 273 + 30*21
    ((2480, 3508), 9, (2, 3), 903),
    ((612, 792), 9, (2, 3), 903),       # Letter at 72 dpi: upscaled, still tiled
    ((1920, 1080), 9, (4, 2), 1093),    # exact 2:1 tie, area > half of 8 tiles -> 4x2
    ((1920, 1080), MAX_TILES_VLLM, (2, 1), 483),
    ((1000, 1000), 9, (2, 2), 693),
    ((3000, 1000), 9, (3, 1), 583),
    ((640, 640), 9, (1, 1), 273),       # <= 640 on both sides: global view only
    ((300, 200), 9, (1, 1), 273),
])
def test_gundam_grid_and_tokens(size, max_tiles, grid, image_tokens):
    wl = workload_shapes(*size, mode="gundam", text_tokens=9, max_tiles=max_tiles)
    assert wl.tile_grid == grid
    assert wl.image_tokens == image_tokens
    assert wl.prompt_tokens == image_tokens + 10  # BOS + 9 text tokens


@pytest.mark.parametrize("mode, image_tokens, prompt_tokens", [
    ("tiny", 73, 83), ("small", 111, 121), ("base", 273, 283), ("large", 421, 431),
])
def test_native_modes(mode, image_tokens, prompt_tokens):
    wl = workload_shapes(1654, 2339, mode=mode, text_tokens=9)
    assert (wl.tile_grid, wl.image_tokens, wl.prompt_tokens) == ((1, 1), image_tokens, prompt_tokens)
    assert [(v.name, v.count) for v in wl.views] == [("global", 1)]


def test_views_tiles_first_then_global():
    wl = workload_shapes(1654, 2339, "gundam")
    assert [(v.name, v.count, v.side, v.grid) for v in wl.views] == [("tiles", 6, 640, 10), ("global", 1, 1024, 16)]


def test_round_trip_dict():
    wl = workload_shapes(1920, 1080, "gundam", text_tokens=9)
    assert type(wl).from_dict(wl.to_dict()) == wl


def test_tie_rule_needs_area():
    # 1200x600 is exactly 2:1 too, but 720,000 px < 0.5 * 640^2 * 8 = 1,638,400 px: stays 2x1
    assert select_tile_grid(1200, 600) == (2, 1)


def test_bad_mode_and_size():
    with pytest.raises(ValueError, match="unknown mode"):
        workload_shapes(100, 100, "huge")
    with pytest.raises(ValueError, match="empty"):
        workload_shapes(0, 100)
