"""Image loading and pixel preprocessing for DeepSeek-OCR v1 (the vendor's process/image_process.py:
resize and pad, normalisation, `dynamic_preprocess` tiling).

`load_image` turns a path or PIL image into an upright 8-bit RGB image, or raises `ImageError` with one
line saying what is wrong. `prepare` cuts it into the views that `dsocr.workload.workload_shapes` decides
(every size and grid comes from there) and normalises them to [-1, 1] float32 tensors.

Conversions (decided here; the reference code just calls `convert("RGB")`):
- transparency (RGBA, LA, PA, P or L with a transparent colour) is composited on WHITE. A plain convert
  would keep whatever colour hides under transparent pixels -- often black, which turns a transparent
  document into black text on black. Only pixels with alpha < 255 differ from the reference.
- CMYK -> RGB by PIL's own formula (no ICC profile).
- 16-bit greyscale ('I;16*', and 'I' holding 16-bit samples) -> 8-bit by v / 257, rounded, so 65535 -> 255
  (a plain convert would clip everything above 255 to white). 'I' images whose maximum is <= 255 are taken
  as 8-bit already; 'F' images are clipped to 0..255.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dsocr_perf.dsocr.workload import MAX_TILES_HF, MODES, PAD_COLOR, Workload, workload_shapes

# PIL refuses images above twice its MAX_IMAGE_PIXELS (decompression-bomb guard); we keep that same
# limit even if a caller disabled PIL's check: ~179 MP, i.e. about 13,400 x 13,400.
MAX_PIXELS = 2 * 89_478_485
MEAN = STD = 0.5
WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An input image that cannot be used; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class PreparedImage:
    workload: Workload
    tiles: torch.Tensor | None    # (n, 3, 640, 640) row-major tiles, or None when the page is not tiled
    global_view: torch.Tensor     # (1, 3, S, S)


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a file: {path} (give the path of an image file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else str(e)
        raise ImageError(f"{path}: image too large ({size}, limit {MAX_PIXELS:,}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read (PNG, JPEG, TIFF, WebP, ...)") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot open image: {e}") from None
    return image


def _check_size(image: Image.Image, name: str) -> None:
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: image is empty ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: image too large ({w}x{h} = {w * h:,} pixels, limit {MAX_PIXELS:,}); "
                         "downscale it first")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("L", "RGB") and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        samples = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or samples.max(initial=0) > 255:
            samples = samples / 257.0
        grey = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")   # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX


def load_image(path_or_pil: str | Path | Image.Image) -> Image.Image:
    """An upright 8-bit RGB copy of the image (EXIF orientation applied), or ImageError."""
    if isinstance(path_or_pil, Image.Image):
        image, name = path_or_pil, "image"
    else:
        path = Path(path_or_pil)
        image, name = _open(path), str(path)
    _check_size(image, name)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: image data is truncated or corrupt ({e}); re-export the file") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]: pixel / 255, then (x - mean) / std with mean = std = 0.5."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))     # (H, W, 3)
    x = pixels.permute(2, 0, 1).float() / 255.0
    return (x - MEAN) / STD


def prepare(image: str | Path | Image.Image, mode: str = "gundam", max_tiles: int = MAX_TILES_HF,
            text_tokens: int = 0) -> PreparedImage:
    """Views of one page as the model consumes them: row-major tiles (if any) and the global view."""
    image = load_image(image)
    workload = workload_shapes(image.width, image.height, mode, text_tokens, max_tiles)
    views = {v.name: v for v in workload.views}

    side = views["global"].side
    if MODES[mode].pad:   # aspect-preserving fit, centred on grey
        global_image = ImageOps.pad(image, (side, side), method=Image.Resampling.BICUBIC,
                                    color=(PAD_COLOR,) * 3)
    else:                 # squash to a square, aspect ignored
        global_image = image.resize((side, side), Image.Resampling.BICUBIC)
    global_view = to_tensor(global_image).unsqueeze(0)              # (1, 3, S, S)

    tiles = None
    if "tiles" in views:
        tile = views["tiles"].side
        across, down = workload.tile_grid
        stretched = image.resize((tile * across, tile * down), Image.Resampling.BICUBIC)
        crops = [stretched.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
                 for r in range(down) for c in range(across)]
        tiles = torch.stack([to_tensor(c) for c in crops])          # (across*down, 3, tile, tile)
    return PreparedImage(workload, tiles, global_view)
