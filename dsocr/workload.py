"""Workload shapes of one page: the single source of truth for views, tile grid and token counts.

Pure Python (no torch, no PIL): the preprocessing, the manifest, the analytic FLOP model and the tests
all call `workload_shapes`; nothing else computes these numbers. Rules: the vendor's config.py (modes)
and process/image_process.py (tiling, token counts); tests/test_workload.py holds the numbers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PATCH = 16          # SAM patch size in pixels
DOWNSAMPLE = 4      # SAM net_2/net_3 halve the grid twice: one token per 64x64 pixels
TILE = 640          # Gundam tile side
PAD_COLOR = 127     # fill of aspect-preserving padding, int(0.5 * 255)


@dataclass(frozen=True)
class Mode:
    name: str
    base_size: int    # side of the global view
    image_size: int   # side of a tile (crop modes) -- equal to base_size otherwise
    crop: bool        # Gundam: global view plus a grid of tiles
    pad: bool         # aspect-preserving fit + pad (True) or squash resize (False) for the global view


MODES = {
    "tiny": Mode("tiny", 512, 512, crop=False, pad=False),
    "small": Mode("small", 640, 640, crop=False, pad=False),
    "base": Mode("base", 1024, 1024, crop=False, pad=True),
    "large": Mode("large", 1280, 1280, crop=False, pad=True),
    "gundam": Mode("gundam", 1024, 640, crop=True, pad=True),
}

MIN_TILES = 2
MAX_TILES_HF = 9    # Hugging Face `infer` path (default here)
MAX_TILES_VLLM = 6  # vendor vLLM config


@dataclass(frozen=True)
class View:
    """One batch of same-sized views that go through SAM/CLIP/projector together."""

    name: str   # "tiles" or "global"
    count: int  # batch size
    side: int   # pixels per side

    @property
    def grid(self) -> int:
        """Tokens per side after SAM's downsampling (16 for 1024, 10 for 640)."""
        return math.ceil(self.side / PATCH / DOWNSAMPLE)


@dataclass(frozen=True)
class Workload:
    mode: str
    image_width: int
    image_height: int
    tile_grid: tuple[int, int]      # (W tiles across, H tiles down); (1, 1) when untiled
    views: tuple[View, ...]         # in execution order: tiles (if any), then global
    image_tokens: int               # image placeholder slots incl. newlines and the separator
    text_tokens: int                # prompt text tokens (without BOS and image slots)
    prompt_tokens: int = field(init=False)  # prefill sequence length: BOS + image + text

    def __post_init__(self):
        object.__setattr__(self, "prompt_tokens", 1 + self.image_tokens + self.text_tokens)

    @property
    def tiled(self) -> bool:
        return self.tile_grid != (1, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tile_grid"] = list(self.tile_grid)
        d["views"] = [asdict(v) | {"grid": v.grid} for v in self.views]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        views = tuple(View(v["name"], int(v["count"]), int(v["side"])) for v in d["views"])
        return cls(d["mode"], int(d["image_width"]), int(d["image_height"]),
                   tuple(d["tile_grid"]), views, int(d["image_tokens"]), int(d["text_tokens"]))


def select_tile_grid(width: int, height: int, min_tiles: int = MIN_TILES,
                     max_tiles: int = MAX_TILES_HF, tile: int = TILE) -> tuple[int, int]:
    """Gundam crop grid (W, H): closest aspect ratio among W*H in [min, max].

    Candidates go by tile count ascending; an exact tie in aspect difference moves to the later
    (larger) grid only when the image area exceeds half the grid's pixel area.
    """
    aspect = width / height
    candidates = sorted(
        {(w, h) for n in range(min_tiles, max_tiles + 1) for w in range(1, n + 1)
         for h in range(1, n + 1) if min_tiles <= w * h <= max_tiles},
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), float("inf")
    for w, h in candidates:
        diff = abs(aspect - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * w * h:
            best = (w, h)
    return best


def workload_shapes(width: int, height: int, mode: str = "gundam", text_tokens: int = 0,
                    max_tiles: int = MAX_TILES_HF) -> Workload:
    """Views, tile grid and token counts for an image of `width` x `height` pixels."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height} is empty")
    m = MODES[mode]
    global_view = View("global", 1, m.base_size)
    n_global = global_view.grid
    image_tokens = n_global * (n_global + 1) + 1   # a newline per row, one separator
    grid = (1, 1)
    if m.crop and not (width <= m.image_size and height <= m.image_size):
        grid = select_tile_grid(width, height, max_tiles=max_tiles, tile=m.image_size)
    views: tuple[View, ...] = (global_view,)
    if grid != (1, 1):
        tiles = View("tiles", grid[0] * grid[1], m.image_size)
        w_tiles, h_tiles = grid
        image_tokens += (h_tiles * tiles.grid) * (w_tiles * tiles.grid + 1)
        views = (tiles, global_view)
    return Workload(mode, width, height, grid, views, image_tokens, text_tokens)
